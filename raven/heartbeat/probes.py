"""What the heartbeat asks each interval: its own path to the API server, the kubelet's health,
the local agent's role and the pool's relays. Each question gives a plain answer, never raises.

- The direct probe is an HTTPS ``GET /healthz`` straight to the API server (the ``--upstream``
  URL, verified with ``--ca-cert``; never through the cache-proxy or a relay, and never through
  a proxy from the environment) over a kept-alive connection, so one probe per interval costs one
  small request, not a TLS handshake. Any HTTP answer below 500 is success: a 401 or 403 still
  proves the API server is reachable (the probe sends no credential).
- The kubelet: ``GET`` its health URL (default ``http://127.0.0.1:10248/healthz``); only 200 is
  healthy.
- The agent's role: ``GET`` its role URL (default ``http://127.0.0.1:10262/role``) for JSON
  ``{"gateway": bool}``; anything else (no agent, an old one) means not the gateway.
- A relay: ``GET http://IP:PORT/relay``; ready only when it answers 200 with
  ``"reachesCloud": true``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from raven.heartbeat.decide import RelayAnswer

FAILURES = (aiohttp.ClientError, TimeoutError, OSError, ValueError)


@dataclass(frozen=True)
class ProbeTargets:
    upstream: str  # https://host:port of the API server
    ca_cert: str | None  # the API server's CA; None: the system's
    kubelet: str = "http://127.0.0.1:10248/healthz"
    agent_role: str = "http://127.0.0.1:10262/role"
    timeout: float = 1.0  # seconds, for each question
    keepalive: float = 30.0  # seconds an idle kept-alive connection stays open


class Probes:
    """Two sessions: one for the API server (TLS, kept alive) and one for loopback and LAN
    questions (plain HTTP, nothing secret). Close with :meth:`close`."""

    def __init__(self, targets: ProbeTargets) -> None:
        self.targets = targets
        self._tls = ssl.create_default_context(cafile=targets.ca_cert)
        self._direct: aiohttp.ClientSession | None = None
        self._local: aiohttp.ClientSession | None = None

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        if self._direct is None:
            self._direct = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._tls, limit=2, keepalive_timeout=self.targets.keepalive
                ),
                trust_env=False,
            )
        if self._local is None:
            self._local = aiohttp.ClientSession(trust_env=False)
        return self._direct, self._local

    def _timeout(self, seconds: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=seconds or self.targets.timeout)

    async def close(self) -> None:
        for session in (self._direct, self._local):
            if session is not None:
                await session.close()
        self._direct = self._local = None

    async def direct(self) -> bool:
        """True when the API server answered ``/healthz`` directly with a status below 500."""
        session, _ = self._sessions()
        url = self.targets.upstream.rstrip("/") + "/healthz"
        try:
            async with session.get(url, timeout=self._timeout()) as resp:
                await resp.read()
                return resp.status < 500
        except FAILURES:
            return False

    async def kubelet(self) -> bool:
        _, session = self._sessions()
        try:
            async with session.get(self.targets.kubelet, timeout=self._timeout()) as resp:
                await resp.read()
                return resp.status == 200
        except FAILURES:
            return False

    async def gateway(self) -> bool:
        """The local agent says this node is its pool's gateway."""
        doc = await self._json(self.targets.agent_role)
        return doc is not None and doc[1].get("gateway") is True

    async def relay(self, node: str, proxy: str, timeout: float | None = None) -> RelayAnswer:
        doc = await self._json(proxy.rstrip("/") + "/relay", timeout)
        if doc is None:
            return RelayAnswer(node, proxy, ready=False)
        status, body = doc
        ready = status == 200 and body.get("reachesCloud") is True
        return RelayAnswer(node, proxy, ready=ready, gateway=body.get("gateway") is True)

    async def relays(
        self, members: Iterable[tuple[str, str]], timeout: float | None = None
    ) -> tuple[RelayAnswer, ...]:
        """Ask every ``(node, proxy)`` at once; answers in the same order."""
        asked = [self.relay(node, proxy, timeout) for node, proxy in members]
        return tuple(await asyncio.gather(*asked))

    async def _json(
        self, url: str, timeout: float | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        _, session = self._sessions()
        try:
            async with session.get(url, timeout=self._timeout(timeout)) as resp:
                body = await resp.json(content_type=None)
                return (resp.status, body) if isinstance(body, dict) else None
        except FAILURES:
            return None
