"""``raven diagnose SRC DST [-o json] [--lab]``: why two pods can or cannot talk."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from raven.diagnose.path import PathError
from raven.diagnose.report import as_json, as_text
from raven.diagnose.run import Settings, diagnose, objects_or_error, resolve
from raven.diagnose.transport import KubectlTransport, Transport
from raven.model import DEFAULT_RULE_PRIORITY, DEFAULT_TABLE

#: Exit codes: the path works (warnings allowed); a hop is wrong; the diagnosis itself failed.
HEALTHY, BROKEN, FAILED = 0, 1, 2


def run_diagnosis(
    src: str,
    dst: str,
    transport: Transport,
    *,
    kubeconfig: str | None,
    lease_namespace: str,
    pod_namespace: str,
    output: str,
    settings: Settings,
) -> int:
    """Diagnose and print; the exit code."""
    try:
        objects = objects_or_error(kubeconfig, lease_namespace)
        src_ip, _ = resolve(src, transport, kubeconfig=kubeconfig, namespace=pod_namespace)
        dst_ip, _ = resolve(dst, transport, kubeconfig=kubeconfig, namespace=pod_namespace)
    except PathError as e:
        typer.echo(f"error: {e}", err=True)
        return FAILED
    report = diagnose(
        src, dst, transport, objects=objects, src_ip=src_ip, dst_ip=dst_ip, settings=settings
    )
    if output == "json":
        typer.echo(json.dumps(as_json(report), indent=2))
    else:
        typer.echo(as_text(report))
    if report.error:
        return FAILED
    return HEALTHY if report.healthy else BROKEN


def command(
    src: Annotated[str, typer.Argument(help="Source pod: IP, name or NAMESPACE/NAME.")],
    dst: Annotated[str, typer.Argument(help="Destination pod: IP, name or NAMESPACE/NAME.")],
    output: Annotated[str, typer.Option("-o", "--output", help="text or json")] = "text",
    kubeconfig: Annotated[str | None, typer.Option(help="Default: $KUBECONFIG, ...")] = None,
    namespace: Annotated[
        str, typer.Option("-n", help="Namespace of pods given by name.")
    ] = "default",
    raven_namespace: Annotated[
        str, typer.Option(help="Where Raven's pods and Leases are (RAVEN_LEASE_NAMESPACE).")
    ] = "raven-system",
    wg_interface: Annotated[str, typer.Option(help="RAVEN_WG_INTERFACE of the nodes.")] = "raven0",
    table: Annotated[int, typer.Option(help="RAVEN_TABLE of the nodes.")] = DEFAULT_TABLE,
    rule_priority: Annotated[
        int, typer.Option(help="RAVEN_RULE_PRIORITY.")
    ] = DEFAULT_RULE_PRIORITY,
    lab: Annotated[
        bool, typer.Option("--lab", help="Diagnose the running lab (RAVEN_LAB_PREFIX/DIR).")
    ] = False,
) -> None:
    """The path a packet from SRC to DST should take, every hop checked, probes where they tell
    more; names the first wrong hop, its evidence and what to do. Exit 0 when the path works,
    1 when a hop is wrong, 2 when the diagnosis could not be made."""
    if output not in ("text", "json"):
        typer.echo(f"error: -o {output!r}: expected text or json", err=True)
        raise typer.Exit(FAILED)
    settings = Settings(table=table, rule_priority=rule_priority)
    transport: Transport
    if lab:
        from raven.lab import engine
        from raven.lab.diagnose import lab_context

        transport, kubeconfig, raven_namespace = lab_context(engine.settings_from_env())
    else:
        transport = KubectlTransport(
            kubeconfig=kubeconfig, namespace=raven_namespace, wg_interface=wg_interface
        )
    code = run_diagnosis(
        src,
        dst,
        transport,
        kubeconfig=kubeconfig,
        lease_namespace=raven_namespace,
        pod_namespace=namespace,
        output=output,
        settings=settings,
    )
    raise typer.Exit(code)
