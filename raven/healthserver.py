"""The small HTTP endpoint of a Raven process: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers 200 while ``alive()`` holds (the process's loops run) and 503 otherwise, so
the kubelet restarts a process that hangs; ``/readyz`` answers 200 while ``ready()`` holds, 503
with the reason otherwise; ``/metrics`` is the Prometheus text of a prometheus-client registry.
Plain HTTP and no credentials: it says nothing secret, and the kubelet probes it.

A process may also say what it is on ``/role`` (JSON from ``role()``): the agent tells its pool
and whether it is the pool's active gateway, which the node's heartbeat relay repeats to the
pool's members so a node cut from the cloud can find the gateway without the API server.
And on ``/status`` (JSON from the coroutine ``status()``) what it knows about its node: the agent
says its role, plan, what the kernel holds, its last reconcile and error (``raven status --node``;
:mod:`agent.nodestatus`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: (ok, why): why is shown in the body when not ok.
Check = Callable[[], tuple[bool, str]]
#: What ``/role`` answers, as JSON.
Role = Callable[[], dict[str, Any]]
#: What ``/status`` answers, as JSON (it may read the kernel, so it is a coroutine).
Status = Callable[[], Awaitable[dict[str, Any]]]


class HealthServer:
    def __init__(
        self,
        *,
        alive: Check,
        ready: Check,
        registry: CollectorRegistry,
        host: str = "0.0.0.0",
        port: int = 10262,
        role: Role | None = None,
        status: Status | None = None,
    ) -> None:
        self.alive, self.ready, self.registry = alive, ready, registry
        self.role = role
        self.status = status
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._check(self.alive))
        app.router.add_get("/readyz", self._check(self.ready))
        app.router.add_get("/metrics", self._metrics)
        if self.role is not None:
            app.router.add_get("/role", self._role)
        if self.status is not None:
            app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server: Any = site._server  # aiohttp keeps the listening server private
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _check(check: Check) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_: web.Request) -> web.StreamResponse:
            ok, why = check()
            return web.Response(status=200 if ok else 503, text="ok\n" if ok else f"{why}\n")

        return handler

    async def _role(self, _: web.Request) -> web.Response:
        assert self.role is not None
        return web.json_response(self.role())

    async def _status(self, _: web.Request) -> web.Response:
        assert self.status is not None
        return web.json_response(await self.status())

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
