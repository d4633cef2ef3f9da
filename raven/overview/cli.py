"""``raven status`` and ``raven graph``: read the cluster, render, print. The only side effects
of :mod:`raven.overview` live here and in the readers it calls."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from raven.kube import NODES, KubeClient, KubeError, Timeouts, load_config
from raven.names import POOL_LABEL
from raven.overview.dot import to_dot
from raven.overview.fetch import read_overview
from raven.overview.nodeclient import (
    HEALTH_PORT,
    NodeStatusError,
    fetch_exec,
    fetch_http,
    status_url,
)
from raven.overview.render import FORMATS, GraphvizError, render
from raven.overview.tables import Table, cluster_tables, node_tables, plain, to_rich

Kubeconfig = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube)"
    ),
]
PoolLabel = Annotated[str, typer.Option("--pool-label", help="Node label naming the pool")]


def fail(message: object, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def print_tables(tables: list[Table], notes: Sequence[str] = ()) -> None:
    """Rich tables on a terminal, aligned plain text otherwise (pipes, files, logs)."""
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        for table in to_rich(tables):
            console.print(table)
    else:
        typer.echo(plain(tables), nl=False)
    for note in notes:
        typer.echo(f"note: {note}", err=True)


def print_node_status(doc: dict[str, Any], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_tables(node_tables(doc))


def _check_output(output: str, allowed: tuple[str, ...]) -> None:
    if output not in allowed:
        fail(f"-o {output!r}: expected one of {', '.join(allowed)}", 2)


def status(
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    node: Annotated[
        str | None,
        typer.Option("--node", help="One node: its role, plan, kernel, last reconcile, error"),
    ] = None,
    via: Annotated[
        str,
        typer.Option(
            "--via",
            help="With --node: http (the agent's port on the node's InternalIP) or exec"
            " (kubectl exec into the node's Raven pod)",
        ),
    ] = "http",
    port: Annotated[
        int, typer.Option("--port", help="With --node: the agent's health port (RAVEN_HEALTH_PORT)")
    ] = HEALTH_PORT,
    kubeconfig: Kubeconfig = None,
    pool_label: PoolLabel = POOL_LABEL,
) -> None:
    """Pools, gateways, members, tunnels and the last failover; --node: one node's agent.

    Per pool: its gateway, members (and whose heartbeat is delegated), tunnel peers with state
    and RTT, the last gateway change and its cause. With --node NODE: that node's role, plan,
    what its kernel holds, its last reconcile and any error, as its agent reports them.
    """
    _check_output(output, ("table", "json"))
    if node is not None:
        _check_output(via, ("http", "exec"))
        try:
            if via == "exec":
                doc = fetch_exec(node, kubeconfig=kubeconfig, port=port)
            else:
                doc = asyncio.run(_node_over_http(node, kubeconfig, port))
        except (NodeStatusError, KubeError) as error:
            fail(error)
        print_node_status(doc, output)
        return
    try:
        ov, notes = asyncio.run(read_overview(kubeconfig, pool_label=pool_label))
    except KubeError as error:
        fail(error)
    if output == "json":
        typer.echo(json.dumps(ov.as_json() | {"notes": notes}, indent=2))
        return
    print_tables(cluster_tables(ov), notes)


async def _node_over_http(node: str, kubeconfig: Path | None, port: int) -> dict[str, Any]:
    config = load_config(kubeconfig, timeouts=Timeouts(connect=5.0, read=15.0))
    async with KubeClient(config, user_agent="raven-status") as client:
        obj = await client.get(NODES, node)
    return await fetch_http(status_url(obj, port))


def graph(
    output: Annotated[str, typer.Option("-o", "--output", help="dot, png or svg")] = "dot",
    out: Annotated[
        Path | None, typer.Option("--out", help="write here instead of standard output")
    ] = None,
    kubeconfig: Kubeconfig = None,
    pool_label: PoolLabel = POOL_LABEL,
) -> None:
    """The cluster as a picture: pools, gateways, the relay and every tunnel.

    Tunnels are coloured by state (green up, red down, grey unknown) and labelled with their
    RTT. DOT by default; PNG and SVG are rendered by Graphviz's dot.
    """
    _check_output(output, ("dot", *FORMATS))
    if output != "dot" and out is None and sys.stdout.isatty():
        fail(f"not writing {output.upper()} to a terminal: give --out FILE or redirect", 2)
    try:
        ov, notes = asyncio.run(read_overview(kubeconfig, pool_label=pool_label))
    except KubeError as error:
        fail(error)
    text = to_dot(ov)
    try:
        data = text.encode() if output == "dot" else render(text, output)
    except GraphvizError as error:
        fail(error)
    if out is not None:
        out.write_bytes(data)
        typer.echo(f"wrote {out} ({len(data)} bytes)", err=True)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    for note in notes:
        typer.echo(f"note: {note}", err=True)
