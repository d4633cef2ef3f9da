"""``raven-agent``: run the node agent, or with ``--cleanup`` remove everything Raven added."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from agent.config import AgentSettings
from raven.logs import configure as configure_logging

app = typer.Typer(add_completion=False)


@app.command()
def run(
    node_name: Annotated[
        str | None, typer.Option(help="This node's name (env RAVEN_NODE_NAME)")
    ] = None,
    kubeconfig: Annotated[Path | None, typer.Option(help="kubeconfig; default in-cluster")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Key pair folder (default /var/lib/raven)")
    ] = None,
    wg_interface: Annotated[
        str | None, typer.Option(help="WireGuard device name (default raven0)")
    ] = None,
    table: Annotated[
        int | None, typer.Option(help="Raven's routing table id (default 9027)")
    ] = None,
    rule_priority: Annotated[
        int | None, typer.Option(help="Policy rule priority (default 9027)")
    ] = None,
    cleanup: Annotated[
        bool, typer.Option("--cleanup", help="Remove all Raven state, then exit")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(help="console or json (env RAVEN_LOG_FORMAT; default console)"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The Raven node agent."""
    given: dict[str, Any] = {
        "log_format": log_format,
        "node_name": node_name,
        "kubeconfig": kubeconfig,
        "state_dir": state_dir,
        "wg_interface": wg_interface,
        "table": table,
        "rule_priority": rule_priority,
    }
    if cleanup and node_name is None:
        given["node_name"] = "cleanup"  # uninstall needs no identity
    try:
        settings = AgentSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as error:
        for problem in error.errors():
            field = ".".join(str(p) for p in problem["loc"])
            typer.echo(f"raven-agent: bad setting {field}: {problem['msg']}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_format, level=logging.DEBUG if verbose else logging.INFO)
    if cleanup:
        from agent.uninstall import uninstall

        sys.exit(uninstall(settings))
    from agent.runtime import Agent

    asyncio.run(Agent(settings).run())


def main() -> None:
    app()
