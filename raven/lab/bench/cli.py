"""``raven bench …``: run a benchmark, print its figures (``-o json`` for machines)."""

from __future__ import annotations

import importlib
import json
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)

Output = Annotated[str, typer.Option("-o", "--output", help="text or json")]


def _emit(figures: dict[str, Any], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(figures, indent=2, sort_keys=True))
        return
    width = max(len(k) for k in figures) if figures else 0
    for key, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        typer.echo(f"{key:<{width}}  {shown}")


def _run(module: str, output: str, **kwargs: Any) -> None:
    if output not in ("text", "json"):
        typer.echo(f"error: -o {output!r}: expected 'text' or 'json'", err=True)
        raise typer.Exit(2)
    bench = importlib.import_module(f"raven.lab.bench.{module}")
    try:
        figures = bench.run(**kwargs)
    except bench.BenchError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    render = getattr(bench, "render", None)
    if output == "text" and render is not None:
        typer.echo(render(figures))  # a bench whose figures are a table, not a list
        return
    _emit(figures, output)


@app.command()
def crosspool(
    output: Output = "text",
    duration: Annotated[float, typer.Option(help="Seconds of each iperf3 flow.")] = 5.0,
    rounds: Annotated[
        int, typer.Option(help="Alternating Raven/hand-built flows; figures are medians.")
    ] = 3,
    skip_handbuilt: Annotated[
        bool, typer.Option("--skip-handbuilt", help="Measure Raven only (no ratio).")
    ] = False,
    prefix: Annotated[
        str | None,
        typer.Option(
            help="Lab prefix for the bench's own lab (default: bx<pid>); the "
            "hand-built chain uses <prefix>h."
        ),
    ] = None,
    state_dir: Annotated[
        str | None, typer.Option(help="State dir of the bench's lab (default: a temp dir).")
    ] = None,
) -> None:
    """Lab up to full ping matrix; cross-pool TCP through Raven vs a hand-built WireGuard path."""
    _run(
        "crosspool",
        output,
        duration=duration,
        rounds=rounds,
        skip_handbuilt=skip_handbuilt,
        prefix=prefix,
        state_dir=state_dir,
    )


@app.command()
def routes(
    output: Output = "text",
    count: Annotated[int, typer.Option(help="Routes in the full sync.")] = 10000,
    rounds: Annotated[
        int, typer.Option(help="Alternating ip -batch/Raven syncs; the best of each counts.")
    ] = 3,
) -> None:
    """Full sync of COUNT routes by Raven's reconciler vs `ip -batch`, one-route update, idle."""
    _run("routes", output, count=count, rounds=rounds)


@app.command()
def failover(
    output: Output = "text",
    prefix: Annotated[
        str | None, typer.Option(help="Lab prefix for the bench's own lab (default: fo<pid>).")
    ] = None,
    state_dir: Annotated[
        str | None, typer.Option(help="State dir of the bench's lab (default: a temp dir).")
    ] = None,
    recover_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for traffic to recover after each fault.")
    ] = 30.0,
    lease_duration: Annotated[
        float | None, typer.Option(help="Agents' RAVEN_LEASE_DURATION (s); default: theirs.")
    ] = None,
    lease_renew: Annotated[
        float | None, typer.Option(help="Agents' RAVEN_LEASE_RENEW (s); default: theirs.")
    ] = None,
    lease_retry: Annotated[
        float | None, typer.Option(help="Agents' RAVEN_LEASE_RETRY (s); default: theirs.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Progress on stderr.")] = False,
) -> None:
    """10 ms probe edge-a member -> edge-b while the edge-a gateway crashes, then stops."""
    _run(
        "failover",
        output,
        prefix=prefix,
        state_dir=state_dir,
        recover_timeout=recover_timeout,
        lease_duration=lease_duration,
        lease_renew=lease_renew,
        lease_retry=lease_retry,
        verbose=verbose,
    )


@app.command()
def heartbeat(
    output: Output = "text",
    cut_seconds: Annotated[
        float, typer.Option(help="How long the edge-a member stays cut from the cloud.")
    ] = 180.0,
    sample: Annotated[float, typer.Option(help="Seconds between two samples of its Lease.")] = 0.5,
    prefix: Annotated[
        str | None, typer.Option(help="Lab prefix for the bench's own lab (default: hb<pid>).")
    ] = None,
    state_dir: Annotated[
        str | None, typer.Option(help="State dir of the bench's lab (default: a temp dir).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Progress on stderr.")] = False,
) -> None:
    """Cut an edge-a member from the cloud: heartbeat through the gateway, Lease ages, writes."""
    _run(
        "heartbeat",
        output,
        cut_seconds=cut_seconds,
        sample_s=sample,
        prefix=prefix,
        state_dir=state_dir,
        verbose=verbose,
    )


@app.command("cache-proxy")
def cache_proxy(
    output: Output = "text",
    objects: Annotated[int, typer.Option(help="Nodes to create and cache.")] = 5000,
    gets: Annotated[int, typer.Option(help="GETs timed, direct and through the proxy.")] = 300,
    churn_rate: Annotated[float, typer.Option(help="Node writes a second in the churn.")] = 20.0,
    churn_seconds: Annotated[float, typer.Option(help="Seconds of churn measured.")] = 20.0,
) -> None:
    """raven-cache-proxy vs the API server: GET latency quiet and under churn, watch event
    delay, CPU, offline list and memory."""
    _run(
        "cacheproxy",
        output,
        objects=objects,
        gets=gets,
        churn_rate=churn_rate,
        churn_seconds=churn_seconds,
    )


@app.command()
def resources(
    output: Output = "text",
    prefix: Annotated[
        str | None, typer.Option(help="Lab prefix for the bench's own lab (default: rs<pid>).")
    ] = None,
    state_dir: Annotated[
        str | None, typer.Option(help="State dir of the bench's lab (default: a temp dir).")
    ] = None,
    idle: Annotated[float, typer.Option(help="Seconds of the idle window.")] = 30.0,
    failover: Annotated[
        float, typer.Option(help="Seconds measured after the edge-a gateway's agent crashes.")
    ] = 15.0,
    restart: Annotated[
        float, typer.Option(help="Seconds measured after that agent starts again.")
    ] = 15.0,
    image: Annotated[
        bool, typer.Option(help="Also report the size of Raven's image (needs Docker).")
    ] = True,
    verbose: Annotated[bool, typer.Option("--verbose", help="Progress on stderr.")] = False,
) -> None:
    """Memory and CPU of the pod's containers (agent + wireguard-go, cache-proxy): idle,
    failing over, restarting; and the image's size."""
    _run(
        "resources",
        output,
        prefix=prefix,
        state_dir=state_dir,
        idle=idle,
        failover=failover,
        restart=restart,
        image=image,
        verbose=verbose,
    )


@app.command()
def scale(
    output: Output = "text",
    pools: Annotated[
        str, typer.Option(help="Fleet sizes in pools, comma-separated; each is one phase.")
    ] = "10,50",
    nodes: Annotated[int, typer.Option(help="Nodes per pool.")] = 10,
    workers: Annotated[
        int | None, typer.Option(help="Agent processes (default: one per core).")
    ] = None,
    window: Annotated[
        float, typer.Option(help="Seconds of steady state measured per phase.")
    ] = 60.0,
    settle: Annotated[
        float, typer.Option(help="Seconds waited after steady state before the window.")
    ] = 5.0,
    trials: Annotated[int, typer.Option(help="Gateway crashes timed per phase.")] = 3,
    baseline_pools: Annotated[
        int, typer.Option(help="Pools of the lease-only baseline phase (0: none).")
    ] = 10,
    start_rate: Annotated[
        float, typer.Option(help="Agents started a second, as kubelets would start them.")
    ] = 20.0,
    verbose: Annotated[bool, typer.Option("--verbose", help="Progress on stderr.")] = False,
) -> None:
    """P pools x N nodes of simulated agents: API writes, reads and watch events per pool and
    node, agent CPU and memory, crash failover; the arithmetic to 1,000 pools x 20 nodes."""
    _run("scale", output, pools=pools, nodes=nodes, workers=workers, window=window,
         settle=settle, trials=trials, baseline_pools=baseline_pools, start_rate=start_rate,
         verbose=verbose)


@app.command()
def reuse(
    output: Output = "text",
    modes: Annotated[
        str,
        typer.Option(
            help="Modes measured in the run, in order: direct (no reuse), node (node-level "
            "reuse), pool (node- and pool-level reuse)."
        ),
    ] = "direct,node,pool",
    nodes_per_pool: Annotated[int, typer.Option(help="Nodes in each edge pool.")] = 3,
    rate: Annotated[float, typer.Option(help="Churn operations a second.")] = 5.0,
    services: Annotated[int, typer.Option(help="Services the churn keeps (within 20 %).")] = 50,
    seconds: Annotated[float, typer.Option(help="Seconds of churn per window.")] = 60.0,
    seed: Annotated[int, typer.Option(help="The churn's seed.")] = 1,
    prefix: Annotated[
        str | None, typer.Option(help="Lab prefix for the bench's own lab (default: ru<pid>).")
    ] = None,
    state_dir: Annotated[
        str | None, typer.Option(help="State dir of the bench's lab (default: a temp dir).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Progress on stderr.")] = False,
) -> None:
    """Bytes of every node's Service/EndpointSlice reads on each edge pool's NAT uplink, and
    the time from an EndpointSlice write to every node's kube-proxy and CoreDNS."""
    _run("reuse", output, modes=modes, nodes_per_pool=nodes_per_pool, rate=rate,
         services=services, churn_seconds=seconds, seed=seed, prefix=prefix,
         state_dir=state_dir, verbose=verbose)
