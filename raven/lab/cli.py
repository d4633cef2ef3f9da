"""``raven lab up | status | down | agents | apiserver | cut | heal | restart | kill |
node-status | standins | churn | break | fix | diagnose``: the command-line face of the lab
engine."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from raven.lab import agents as lab_agents
from raven.lab import apiserver_proc, breaks, deployment, engine, faults, matrix, proxies, sidecars
from raven.lab.state import LabState
from raven.lab.topology import Lab, TopologyError

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


def _fail(message: object, code: int) -> NoReturn:
    """Say what is wrong and exit: 2 for bad input, 1 for a lab that cannot do it."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings(state_dir: Path | None, prefix: str | None) -> engine.Settings:
    try:
        return engine.settings_from_env(state_dir, prefix)
    except ValueError as e:
        _fail(e, 2)


def _load(settings: engine.Settings) -> tuple[LabState, Lab]:
    try:
        return engine.load(settings)
    except engine.LabError as e:
        _fail(e, 1)


def _require_nodes(lab: Lab, names: list[str]) -> None:
    known = [n.name for n in lab.nodes]
    if unknown := [n for n in names if n not in known]:
        _fail(f"no such lab node: {', '.join(map(repr, unknown))} (nodes: {', '.join(known)})", 2)


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
        _fail(e, 2)
    except (engine.LabError, RuntimeError, OSError) as e:
        _fail(e, 1)
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
    """Kubeconfig, API server, cuts, and every node and pod: pool, namespace, addresses, PIDs."""
    if output not in ("table", "json"):
        _fail(f"-o {output!r}: expected 'table' or 'json'", 2)
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
    cut = ", ".join(f"{c['target']} ({c['scope']})" for c in st.cuts)
    typer.echo(f"cut:        {cut or '-'}")
    broken = ", ".join(f"{b['kind']} at {b['target']}" for b in st.breaks)
    typer.echo(f"broken:     {broken or '-'}")
    rows = [
        (
            "KIND",
            "NAME",
            "POOL",
            "NODE",
            "NETNS",
            "ADDRESSES",
            "AGENT",
            "CACHE-PROXY",
            "KUBELET",
            "HEARTBEAT",
            "CLOUD-PATH",
            "CUT",
        )
    ]
    rows += [
        (
            "node",
            n["name"],
            n["pool"],
            "",
            n["netns"],
            ",".join(n["addresses"]),
            _proc(n["agent"]),
            _proc(n["cacheProxy"]),
            _proc(n["kubelet"]),
            _proc(n["heartbeat"]),
            n["cloudPath"] or "-",
            "cut" if n["cut"] else "",
        )
        for n in st.nodes
    ]
    blank = ("",) * 6
    rows += [
        ("pod", p["name"], p["pool"], p["node"], p["netns"], ",".join(p["addresses"]), *blank)
        for p in st.pods
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _proc(info: dict | None) -> str:
    if info is None:
        return "-"
    return str(info["pid"]) if info["running"] else f"{info['pid']} (exited)"


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
        _fail(f"action {action!r}: expected start, stop, kill or restart", 2)
    settings = _settings(state_dir, prefix)
    st, lab = _load(settings)
    _require_nodes(lab, nodes or [])
    if action in ("start", "restart") and (why := engine.agent_problem()):
        _fail(f"cannot start agents: {why}", 1)
    # Every node by default, except those whose processes a pod runs (engine.up's node_netns).
    external = set(st.info.get("external_nodes", []))
    names = nodes or [n.name for n in lab.nodes if n.name not in external]
    for name in names:
        if action in ("stop", "restart"):
            lab_agents.stop(st, name)
            if action == "stop":
                typer.echo(f"stopped agent of {name}")
        elif action == "kill":
            lab_agents.kill(st, name)
            typer.echo(f"killed agent of {name}")
    if action in ("start", "restart"):
        # Each agent talks to the API server through its node's cache proxy: those not running
        # yet (after `up --no-agents`) start first.
        try:
            started = engine.start_agents(settings, names)
        except (engine.LabError, proxies.ProxyError, sidecars.SidecarError, RuntimeError) as e:
            _fail(e, 1)
        for name, pid in started:
            typer.echo(f"{action}ed agent of {name} (pid {pid})")


@app.command()
def standins(
    action: Annotated[str, typer.Argument(help="start or stop")],
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Node names (default: every node)")
    ] = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Start or stop the kube-proxy and CoreDNS stand-ins (raven/lab/standins) of a lab."""
    from raven.lab.standins import control

    if action not in ("start", "stop"):
        _fail(f"action {action!r}: expected start or stop", 2)
    settings = _settings(state_dir, prefix)
    st, lab = _load(settings)
    _require_nodes(lab, nodes or [])
    external = set(st.info.get("external_nodes", []))
    chosen = [n for n in lab.nodes if (n.name in nodes if nodes else n.name not in external)]
    if action == "stop":
        for what in control.stop_all(st, [n.name for n in chosen]):
            typer.echo(f"stopped {what}")
        return
    try:
        control.start_all(st, settings.state_dir, chosen)
    except (control.StandInError, RuntimeError) as e:
        _fail(e, 1)
    for component in control.ROLES:
        for node in chosen:
            pid = st.processes(component, node.name)[-1]["pid"]
            typer.echo(f"{component} stand-in of {node.name} synced (pid {pid})")


@app.command()
def churn(
    rate: Annotated[float, typer.Option(help="Operations a second (create, scale, delete).")] = 5.0,
    services: Annotated[int, typer.Option(help="Services the churn keeps (within 20 %).")] = 50,
    seconds: Annotated[float, typer.Option(help="How long to churn.")] = 60.0,
    seed: Annotated[int, typer.Option(help="The same seed gives the same churn.")] = 1,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Create, scale and delete Services and their EndpointSlices (namespace churn)."""
    import asyncio

    from raven.kube.client import KubeClient, load_config
    from raven.kube.errors import KubeError
    from raven.lab import churn as lab_churn

    settings = _settings(state_dir, prefix)
    st, lab = _load(settings)
    if rate <= 0 or services < 1 or seconds < 0:
        _fail("--rate and --services must be positive, --seconds not negative", 2)

    async def go() -> tuple[int, int]:
        kube = KubeClient(
            load_config(str(settings.state_dir / "kubeconfig")), user_agent="raven-churn"
        )
        try:
            writer = lab_churn.Churn(kube, nodes=[n.name for n in lab.nodes])
            plan = lab_churn.ChurnPlan(services=services, seed=seed)
            await writer.seed(plan)
            done = await writer.run(plan, rate=rate, seconds=seconds)
            return done, len(writer.writes)
        finally:
            await kube.close()

    try:
        done, writes = asyncio.run(go())
    except KubeError as e:
        _fail(e, 1)
    typer.echo(f"churn: {services} Services seeded, {done} operations, {writes} writes")


@app.command()
def apiserver(
    action: Annotated[str, typer.Argument(help="stop (an API outage) or start")],
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Stop or start the lab's API server; its objects survive a stop."""
    if action not in ("stop", "start"):
        _fail(f"action {action!r}: expected stop or start", 2)
    settings = _settings(state_dir, prefix)
    try:
        if action == "stop":
            stopped = engine.stop_apiserver(settings)
            typer.echo("API server stopped" if stopped else "API server was not running")
        else:
            pid = engine.start_apiserver(settings)
            typer.echo(f"API server started (pid {pid})")
    except (engine.LabError, apiserver_proc.ApiServerError) as e:
        _fail(e, 1)


Target = Annotated[
    str,
    typer.Argument(
        help="A pool (edge-a) or a node (edge-a-1); pool/NAME or node/NAME if a name is both.",
        show_default=False,
    ),
]


def _fault_target(settings: engine.Settings, text: str) -> tuple[LabState, Lab, faults.Target]:
    st, lab = _load(settings)
    try:
        return st, lab, faults.resolve_target(lab, text)
    except faults.FaultError as e:
        _fail(e, 2)


@app.command()
def cut(target: Target, state_dir: StateDir = None, prefix: Prefix = None) -> None:
    """Take a pool's or a node's path to the cloud away; the LAN inside the pool keeps working.

    An edge pool is cut at its NAT router, a node in its namespace, a public pool at each node.

    Undo with `raven lab heal`.
    """
    st, lab, tgt = _fault_target(_settings(state_dir, prefix), target)
    try:
        fresh = faults.cut(lab, st, tgt)
    except faults.FaultError as e:
        _fail(e, 1)
    if fresh:
        typer.echo(f"cut {tgt} from the cloud ({faults.describe(lab, tgt)})")
    else:
        typer.echo(f"{tgt} was already cut (its rules are in place)")


@app.command()
def heal(target: Target, state_dir: StateDir = None, prefix: Prefix = None) -> None:
    """Give a pool or node cut by `raven lab cut` its path to the cloud back."""
    st, _, tgt = _fault_target(_settings(state_dir, prefix), target)
    try:
        healed = faults.heal(st, tgt)
    except faults.FaultError as e:
        _fail(e, 1)
    typer.echo(f"healed {tgt}" if healed else f"{tgt} was not cut")


@app.command()
def kill(
    node: Annotated[str, typer.Argument(help="The node whose process to kill.")],
    component: Annotated[
        str, typer.Option("--component", "-c", help="agent, cache-proxy, kubelet or heartbeat")
    ] = "agent",
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """SIGKILL one process of a node, as a crash: nothing of its own clean-up runs.

    `raven lab restart NODE --component ...` starts it again.
    """
    if component not in engine.COMPONENTS:
        _fail(f"--component {component!r}: expected {' or '.join(engine.COMPONENTS)}", 2)
    settings = _settings(state_dir, prefix)
    _, lab = _load(settings)
    _require_nodes(lab, [node])
    try:
        killed = engine.kill(settings, node, component)
    except engine.LabError as e:
        _fail(e, 1)
    typer.echo(
        f"killed {component} of {node}" if killed else f"{component} of {node} was not running"
    )


@app.command()
def restart(
    node: Annotated[str, typer.Argument(help="The node whose process to restart.")],
    component: Annotated[
        str, typer.Option("--component", "-c", help="agent, cache-proxy, kubelet or heartbeat")
    ] = "agent",
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Restart one process of a node: its agent, cache proxy, kubelet stand-in or heartbeat.

    The agent gets SIGTERM (it releases its lease), the proxy keeps its cache on disk.

    A process that was not running is started.
    """
    if component not in engine.COMPONENTS:
        _fail(f"--component {component!r}: expected {' or '.join(engine.COMPONENTS)}", 2)
    settings = _settings(state_dir, prefix)
    st, lab = _load(settings)
    _require_nodes(lab, [node])
    try:
        pid, was_running = engine.restart(settings, node, component)
    except (engine.LabError, proxies.ProxyError, sidecars.SidecarError, RuntimeError) as e:
        _fail(e, 1)
    verb = "restarted" if was_running else "started (it was not running)"
    typer.echo(f"{verb} {component} of {node} (pid {pid})")
    if component == "agent" and not proxies.running(st, node) and st.info.get("api_node_url"):
        typer.echo(
            f"warning: the cache proxy of {node} is not running, so its agent cannot reach the "
            f"API server; start it with `raven lab restart {node} --component cache-proxy`",
            err=True,
        )


@app.command("node-status")
def node_status(
    node: Annotated[str, typer.Argument(help="The lab node whose agent to ask.")],
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """`raven status --node` for a lab node: asked inside the node's namespace."""
    from raven.lab import nodestatus
    from raven.overview.cli import print_node_status
    from raven.overview.nodeclient import NodeStatusError

    if output not in ("table", "json"):
        _fail(f"-o {output!r}: expected 'table' or 'json'", 2)
    _, lab = _load(_settings(state_dir, prefix))
    _require_nodes(lab, [node])
    netns = next(n.netns for n in lab.nodes if n.name == node)
    try:
        doc = nodestatus.fetch(netns)
    except NodeStatusError as e:
        _fail(e, 1)
    print_node_status(doc, output)


def _kube_factory(st: LabState) -> tuple[Callable[[], breaks.Kube], Callable[[], None]]:
    """A lazily made API client for breaks (most kinds never need one) and its closer."""
    made: list[breaks.Kube] = []

    def get() -> breaks.Kube:
        if not made:
            made.append(breaks.Kube(Path(st.info["kubeconfig"]), lab_agents_lease_namespace()))
        return made[0]

    def close() -> None:
        for k in made:
            k.close()

    return get, close


def lab_agents_lease_namespace() -> str:
    return deployment.agent_environment()["RAVEN_LEASE_NAMESPACE"]


@app.command("break")
def break_(
    kind: Annotated[
        str, typer.Argument(help=f"One of: {', '.join(breaks.KINDS)}.", show_default=False)
    ],
    target: Annotated[
        str | None, typer.Argument(help="A pool or node, as the kind takes (default: chosen).")
    ] = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Break something an agent cannot or must not repair; `raven lab fix` undoes it.

    Kinds: nat-udp [POOL], rp-filter [NODE], mtu [POOL], forwarding [NODE], relay-wg,
    bad-key [NODE], overlap [POOL], api [NODE] (netns-lab/README.md says what each does).
    """
    if kind not in breaks.KINDS:
        _fail(f"no such fault kind: {kind!r} (kinds: {', '.join(breaks.KINDS)})", 2)
    st, lab = _load(_settings(state_dir, prefix))
    kube, close = _kube_factory(st)
    try:
        plan = breaks.plan_break(lab, kind, target, breaks.read_facts(lab, st, kube()))
        breaks.apply_break(lab, st, plan, kube)
    except breaks.BreakError as e:
        _fail(e, 1)
    finally:
        close()
    typer.echo(f"broke {plan.kind} at {plan.target}: {plan.summary}")


@app.command()
def fix(
    kind: Annotated[
        str | None, typer.Argument(help="Only this kind (default: every break).")
    ] = None,
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """Undo what `raven lab break` did, exactly (newest first)."""
    st, _ = _load(_settings(state_dir, prefix))
    kube, close = _kube_factory(st)
    try:
        done = breaks.fix(st, kind, kube)
    except breaks.BreakError as e:
        _fail(e, 1)
    finally:
        close()
    typer.echo(f"fixed {', '.join(done)}" if done else "nothing was broken")


@app.command("diagnose")
def diagnose_(
    src: Annotated[str, typer.Argument(help="Source pod: a lab pod name (edge-a-1-pod) or IP.")],
    dst: Annotated[str, typer.Argument(help="Destination pod: a lab pod name or IP.")],
    output: Annotated[str, typer.Option("-o", "--output", help="text or json")] = "text",
    state_dir: StateDir = None,
    prefix: Prefix = None,
) -> None:
    """`raven diagnose --lab`: the path between two lab pods, every hop checked, probed."""
    from raven.diagnose.cli import run_diagnosis
    from raven.diagnose.run import Settings
    from raven.lab.diagnose import lab_context

    if output not in ("text", "json"):
        _fail(f"-o {output!r}: expected text or json", 2)
    try:
        transport, kubeconfig, namespace = lab_context(_settings(state_dir, prefix))
    except engine.LabError as e:
        _fail(e, 2)
    code = run_diagnosis(
        src,
        dst,
        transport,
        kubeconfig=kubeconfig,
        lease_namespace=namespace,
        pod_namespace="default",
        output=output,
        settings=Settings(),
    )
    raise typer.Exit(code)
