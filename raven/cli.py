"""The operator's command line: ``raven lab …`` (and later ``raven status``, ``raven bench``)."""

from __future__ import annotations

import typer

from raven.diagnose.cli import command as diagnose_command
from raven.lab.bench.cli import app as bench_app
from raven.lab.cli import app as lab_app
from raven.overview import cli as overview_cli

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Raven: cross-pool pod connectivity."
)
app.add_typer(
    lab_app, name="lab", help="A multi-pool cluster in network namespaces on this machine."
)
app.add_typer(
    bench_app, name="bench", help="Benchmarks that print their figures against a baseline."
)
app.command("diagnose")(diagnose_command)

app.command("status")(overview_cli.status)
app.command("graph")(overview_cli.graph)


def main() -> None:
    app()
