"""One stand-in process: a component's informers on one node, and its dump.

``python -m raven.lab.standins kube-proxy|coredns --node N --kubeconfig K --dump-file F``
starts one :class:`~raven.lab.standins.reflector.Reflector` per resource the component reads
(:mod:`.components`) with the component's User-Agent, prints ``READY_LINE`` once every one has
listed, and on ``SIGUSR1`` writes everything it holds (objects, counters, arrivals) to the dump
file as JSON (atomically: a reader sees the old dump or the new one). ``SIGTERM`` ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from raven.kube.client import KubeClient, Timeouts, load_config
from raven.lab.standins.components import COMPONENTS, Component
from raven.lab.standins.mirror import Mirror
from raven.lab.standins.reflector import Reflector
from raven.logs import configure as configure_logging

log = logging.getLogger("raven.lab.standins")

READY_LINE = "raven-lab-standin synced"


class StandIn:
    """A component's mirrors and reflectors over one client."""

    def __init__(self, component: Component, node: str, kube: KubeClient) -> None:
        self.component, self.node, self.kube = component, node, kube
        self.mirrors = {w.resource.plural: Mirror(w.resource.plural) for w in component.watches}
        self._pending = set(self.mirrors)
        self.synced = asyncio.Event()

    def _synced(self, plural: str) -> None:
        self._pending.discard(plural)
        if not self._pending:
            self.synced.set()

    def reflectors(self) -> list[Reflector]:
        return [
            Reflector(
                self.kube,
                w,
                self.mirrors[w.resource.plural],
                on_synced=functools.partial(self._synced, w.resource.plural),
            )
            for w in self.component.watches
        ]

    def dump(self, *, since: float = 0.0) -> dict[str, Any]:
        return {
            "component": self.component.name,
            "node": self.node,
            "at": time.time(),
            "resources": {p: m.dump(since=since) for p, m in self.mirrors.items()},
        }


def write_dump(path: Path, dump: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dump, separators=(",", ":")))
    os.replace(tmp, path)


async def _run(args: argparse.Namespace) -> None:
    component = COMPONENTS[args.component]
    timeouts = Timeouts(connect=5.0, read=30.0)
    kube = KubeClient(
        load_config(args.kubeconfig, timeouts=timeouts), user_agent=component.user_agent
    )
    standin = StandIn(component, args.node, kube)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_file = Path(args.dump_file) if args.dump_file else None
    if dump_file is not None:
        loop.add_signal_handler(signal.SIGUSR1, lambda: write_dump(dump_file, standin.dump()))
    tasks = [asyncio.create_task(r.run(), name=f"{component.name}/{r.mirror.resource}")
             for r in standin.reflectors()]  # fmt: skip

    async def announce() -> None:
        await standin.synced.wait()
        print(f"{READY_LINE} component={component.name} node={args.node}", flush=True)

    tasks.append(asyncio.create_task(announce(), name="announce"))
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await kube.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m raven.lab.standins", description=__doc__)
    p.add_argument("component", choices=sorted(COMPONENTS))
    p.add_argument("--node", required=True)
    p.add_argument("--kubeconfig", required=True, help="the component's token, through the proxy")
    p.add_argument("--dump-file", default="", help="where SIGUSR1 writes the dump")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    args = p.parse_args(argv)
    configure_logging(args.log_format)
    asyncio.run(_run(args))
