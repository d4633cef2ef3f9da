"""``raven lab up | status | down``: the command-line face of the lab engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from raven.lab import agents as lab_agents
from raven.lab import apiserver_proc, engine, matrix
from raven.lab.topology import TopologyError

app = typer.Typer(no_args_is_help=True, add_completion=False)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="RAVEN_LAB_DIR",
        help="Where the lab keeps its records, PKI and kubeconfig (default: /run/raven-lab).",
    ),
]
Prefix = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        envvar="RAVEN_LAB_PREFIX",
        help="Name prefix for every namespace, link and chain of the lab (default: rl).",
    ),
]


def _settings(state_dir: Path | None, prefix: str | None) -> engine.Settings:
    try:
        return engine.settings_from_env(state_dir, prefix)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def up(
    topology: Annotated[
        Path | None,
        typer.Option("--topology", help="Topology YAML (default: netns-lab/three-pools.yaml)."),
    ] = None,
    no_agents: Annotated[bool, typer.Option("--no-agents", help="Start no raven-agent.")] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait", help="With agents: return without waiting for a full ping matrix."
        ),
    ] = False,
    no_apiserver: Annotated[
        bool,
        typer.Option("--no-apiserver", hidden=True, help="Network only (for developing the lab)."),
    ] = False,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Build the lab: namespaces, NAT routers, pods, API server, Nodes (and agents)."""
    settings = _settings(state_dir, prefix)
    try:
        res = engine.up(
            topology,
            settings,
            agents=not no_agents,
            apiserver=not no_apiserver,
            log=lambda m: typer.echo(m, err=True),
        )
    except TopologyError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except (engine.LabError, RuntimeError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    lab, sd = res.lab, settings.state_dir
    env = ""
    if settings.prefix != engine.DEFAULT_PREFIX:
        env += f"RAVEN_LAB_PREFIX={settings.prefix} "
    if sd != engine.DEFAULT_STATE_DIR:
        env += f"RAVEN_LAB_DIR={sd} "
    typer.echo(
        f"lab {lab.name!r} is up: {len(lab.nodes)} nodes in "
        f"{len(lab.pools)} pools, {len(lab.pods)} pods, {len(res.agents)} agents"
    )
    if res.kubeconfig:
        typer.echo(f"kubeconfig: {res.kubeconfig}")
        typer.echo(f"API server: {res.api_url}")
        typer.echo(
            f"look around: kubectl --kubeconfig {res.kubeconfig} get nodes -L "
            "apps.openyurt.io/nodepool"
        )
    typer.echo(f"             {env}raven lab status")
    first = lab.pods[0]
    mate = next((p for p in lab.pods[1:] if p.pool == first.pool), None)
    stranger = next((p for p in lab.pods if p.pool != first.pool), None)
    if mate:
        typer.echo(f"             ip netns exec {first.netns} ping {mate.ip}   # same pool")
    if stranger:
        typer.echo(
            f"             ip netns exec {first.netns} ping {stranger.ip}   "
            "# other pool: needs Raven"
        )
    typer.echo(f"tear down:   {env}raven lab down")
    typer.echo(f"up took {res.seconds:.1f}s")
    if res.agents and not no_wait:
        seconds = matrix.wait_full_matrix(lab, timeout=60.0)
        pairs = len(matrix.pairs(lab))
        if seconds is None:
            typer.echo(
                f"not every pod reached every other pod within 60s ({pairs} pairs); "
                "see the agent logs in the state dir",
                err=True,
            )
        else:
            typer.echo(
                f"every pod reaches every other pod ({pairs} pairs) "
                f"{res.seconds + seconds:.1f}s after up began"
            )


@app.command()
def down(state_dir: StateDir = None, prefix: Prefix = None) -> None:
    """Remove every namespace, process, link, socket and file the lab made (safe to repeat)."""
    settings = _settings(state_dir, prefix)
    for warning in engine.down(settings, log=typer.echo):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo("lab is down")


@app.command()
def status(
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Kubeconfig, API server URL, and every node and pod with its pool, namespace and addresses."""
    if output not in ("table", "json"):
        typer.echo(f"error: -o {output!r}: expected 'table' or 'json'", err=True)
        raise typer.Exit(2)
    st = engine.status(_settings(state_dir, prefix))
    if output == "json":
        typer.echo(json.dumps(st.as_json(), indent=2))
        return
    if st.phase == "down":
        typer.echo("no lab is up")
        raise typer.Exit(1)
    typer.echo(f"phase:      {st.phase}")
    typer.echo(f"kubeconfig: {st.kubeconfig or '-'}")
    typer.echo(f"API server: {st.api_url or '-'}")
    rows = [("KIND", "NAME", "POOL", "NODE", "NETNS", "ADDRESSES")]
    rows += [
        ("node", n["name"], n["pool"], "", n["netns"], ",".join(n["addresses"])) for n in st.nodes
    ]
    rows += [
        ("pod", p["name"], p["pool"], p["node"], p["netns"], ",".join(p["addresses"]))
        for p in st.pods
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@app.command()
def agents(
    action: Annotated[str, typer.Argument(help="start, stop (SIGTERM), kill (SIGKILL) or restart")],
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Node names (default: every node)")
    ] = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Start, stop, kill or restart the agents of a running lab."""
    if action not in ("start", "stop", "kill", "restart"):
        typer.echo(f"error: action {action!r}: expected start, stop, kill or restart", err=True)
        raise typer.Exit(2)
    settings = _settings(state_dir, prefix)
    try:
        st, lab = engine.load(settings)
    except engine.LabError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    by_name = {n.name: n for n in lab.nodes}
    unknown = [n for n in nodes or [] if n not in by_name]
    if unknown:
        typer.echo(
            f"error: no such lab node: {', '.join(unknown)} (nodes: {', '.join(by_name)})", err=True
        )
        raise typer.Exit(2)
    if action in ("start", "restart") and (why := engine.agent_problem()):
        typer.echo(f"error: cannot start agents: {why}", err=True)
        raise typer.Exit(1)
    for name in nodes or list(by_name):
        if action in ("stop", "restart"):
            lab_agents.stop(st, name)
        elif action == "kill":
            lab_agents.kill(st, name)
        if action in ("start", "restart"):
            try:
                pid = lab_agents.start(
                    lab, st, settings.state_dir, by_name[name], engine.agent_executable()
                )
            except RuntimeError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(1) from None
            typer.echo(f"{action}ed agent of {name} (pid {pid})")
        else:
            typer.echo(
                f"{action}ed agent of {name}" if action == "kill" else f"stopped agent of {name}"
            )


@app.command()
def apiserver(
    action: Annotated[str, typer.Argument(help="stop (an API outage) or start")],
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Stop or start the lab's API server; its objects survive a stop."""
    if action not in ("stop", "start"):
        typer.echo(f"error: action {action!r}: expected stop or start", err=True)
        raise typer.Exit(2)
    settings = _settings(state_dir, prefix)
    try:
        if action == "stop":
            stopped = engine.stop_apiserver(settings)
            typer.echo("API server stopped" if stopped else "API server was not running")
        else:
            pid = engine.start_apiserver(settings)
            typer.echo(f"API server started (pid {pid})")
    except (engine.LabError, apiserver_proc.ApiServerError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
