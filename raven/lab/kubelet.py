"""The lab's kubelet stand-in: a node's heartbeat and health check, as the kubelet does them.

A real kubelet cannot run here (no container runtime, no kubelet binary), and of all it does only
its heartbeat matters to Raven's edge autonomy. This process, one per lab node inside the node's
namespace, does that part the way kubelet v1.30 does, with its defaults:

- it authenticates as the node (client certificate ``CN=system:node:<name>``, ``O=system:nodes``)
  through the node's cache-proxy (``STATE/nodes/<node>/kubelet.kubeconfig``), with kubelet's
  User-Agent;
- a request gets 10 s (``nodeStatusUpdateFrequency``), as the kubelet's heartbeat client;
- it renews ``kube-node-lease/<node>`` every 10 s (a quarter of the Lease's 40 s duration): an
  update of the Lease it last wrote with a new ``renewTime``, keeping whatever else is on it
  (the heartbeat's annotations); on a conflict it reads the Lease again; it creates the Lease
  when there is none. A failed renewal is retried after 200 ms, doubling up to 7 s, as the
  kubelet's lease controller does;
- every 10 s (``nodeStatusUpdateFrequency``) it reads its Node and, when the Ready condition is
  not ``True`` (the node-lifecycle controller set it ``Unknown``), posts Ready ``True`` with
  reason ``KubeletReady``;
- it answers the kubelet's health check, ``GET http://127.0.0.1:10248/healthz`` → ``ok``.

Run as ``python -m raven.lab.kubelet --node NAME --kubeconfig FILE``; ``raven lab restart|kill
NODE --component kubelet`` operates it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import signal
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from raven.kube.client import KubeClient, Timeouts, load_config
from raven.kube.errors import Conflict, KubeError, NotFound
from raven.kube.resources import NODES, leases
from raven.logs import configure as configure_logging

log = logging.getLogger("raven.lab.kubelet")

NODE_LEASE_NAMESPACE = "kube-node-lease"
USER_AGENT = "kubelet/v1.30.0 (linux/amd64) kubernetes/raven-lab"
HEALTHZ_PORT = 10248
LEASE_SECONDS = 40
RENEW_INTERVAL = LEASE_SECONDS / 4
STATUS_INTERVAL = 10.0
RETRY_FIRST, RETRY_MAX = 0.2, 7.0
READY_LINE = "raven-lab-kubelet healthz on"


def micro_time(when: dt.datetime) -> str:
    """A Lease's MicroTime, as client-go writes it."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(node: str, node_uid: str, now: dt.datetime, seconds: int) -> dict[str, Any]:
    """A new node Lease, owned by its Node as the kubelet makes it."""
    meta: dict[str, Any] = {"name": node, "namespace": NODE_LEASE_NAMESPACE}
    if node_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": seconds,
            "renewTime": micro_time(now),
        },
    }


def renewed(lease: dict[str, Any], node: str, now: dt.datetime, seconds: int) -> dict[str, Any]:
    """``lease`` with a new renewTime (and the kubelet's holder and duration); everything else
    on it, annotations included, kept."""
    out = dict(lease)
    spec = dict(out.get("spec") or {})
    spec.update(holderIdentity=node, leaseDurationSeconds=seconds, renewTime=micro_time(now))
    out["spec"] = spec
    return out


def ready_condition(node: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond
    return None


def ready_patch(now: dt.datetime) -> dict[str, Any]:
    """The node status patch that says Ready, as the kubelet posts it."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ]
        }
    }


@dataclass
class Stats:
    renewals: int = 0
    failures: int = 0
    status_posts: int = 0


class Kubelet:
    def __init__(
        self,
        kube: KubeClient,
        node: str,
        *,
        lease_seconds: int = LEASE_SECONDS,
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self.kube, self.node = kube, node
        self.lease_seconds = lease_seconds
        self.renew_interval = lease_seconds / 4
        self.status_interval = status_interval
        self.stats = Stats()
        self._lease: dict[str, Any] | None = None
        self._node_uid = ""

    @staticmethod
    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def renew_once(self) -> None:
        """One renewal: update the Lease last written, or read/create it first."""
        api = leases(NODE_LEASE_NAMESPACE)
        if self._lease is None:
            try:
                self._lease = await self.kube.get(api, self.node)
            except NotFound:
                if not self._node_uid:
                    node = await self.kube.get(NODES, self.node)
                    self._node_uid = str(node.get("metadata", {}).get("uid", ""))
                body = lease_body(self.node, self._node_uid, self.now(), self.lease_seconds)
                self._lease = await self.kube.create(api, body)
                return
        try:
            self._lease = await self.kube.replace(
                api, renewed(self._lease, self.node, self.now(), self.lease_seconds)
            )
        except (Conflict, NotFound):
            self._lease = None  # someone else wrote it (the heartbeat's annotations): read again
            raise

    async def lease_loop(self) -> None:
        while True:
            delay = RETRY_FIRST
            while True:
                try:
                    await self.renew_once()
                    self.stats.renewals += 1
                    break
                except KubeError as e:
                    self.stats.failures += 1
                    log.warning("lease renewal of %s failed: %s", self.node, e)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
            await asyncio.sleep(self.renew_interval)

    async def status_once(self) -> None:
        node = await self.kube.get(NODES, self.node)
        self._node_uid = str(node.get("metadata", {}).get("uid", "")) or self._node_uid
        cond = ready_condition(node)
        if cond is None or cond.get("status") != "True":
            await self.kube.merge_patch(
                NODES, self.node, ready_patch(self.now()), subresource="status"
            )
            self.stats.status_posts += 1
            log.info("posted Ready for %s (it was %s)", self.node, cond and cond.get("status"))

    async def status_loop(self) -> None:
        while True:
            try:
                await self.status_once()
            except KubeError as e:
                log.warning("node status of %s: %s", self.node, e)
            await asyncio.sleep(self.status_interval)


async def serve_healthz(host: str, port: int) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _run(args: argparse.Namespace) -> None:
    # The kubelet's heartbeat client gives up on a request after nodeStatusUpdateFrequency.
    timeouts = Timeouts(connect=5.0, read=STATUS_INTERVAL)
    kube = KubeClient(load_config(args.kubeconfig, timeouts=timeouts), user_agent=USER_AGENT)
    kubelet = Kubelet(kube, args.node, status_interval=args.status_interval)
    runner = await serve_healthz(args.healthz_host, args.healthz_port)
    print(f"{READY_LINE} {args.healthz_host}:{args.healthz_port} node={args.node}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(kubelet.lease_loop()), asyncio.create_task(kubelet.status_loop())]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await kube.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m raven.lab.kubelet", description=__doc__)
    p.add_argument("--node", required=True)
    p.add_argument("--kubeconfig", required=True, help="the node's identity, through its proxy")
    p.add_argument("--healthz-host", default="127.0.0.1")
    p.add_argument("--healthz-port", type=int, default=HEALTHZ_PORT)
    p.add_argument("--status-interval", type=float, default=STATUS_INTERVAL)
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    args = p.parse_args(argv)
    configure_logging(args.log_format)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
