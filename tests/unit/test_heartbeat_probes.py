"""The heartbeat's questions answered by real HTTP servers on loopback."""

from __future__ import annotations

from aiohttp import web

from raven.heartbeat.decide import RelayAnswer
from raven.heartbeat.probes import Probes, ProbeTargets
from raven.lab.testing.apiserver import ApiServerHandle


async def serve(routes: dict[str, web.Response]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, response in routes.items():

        async def handler(_: web.Request, response: web.Response = response) -> web.Response:
            return web.Response(
                status=response.status, body=response.body, content_type=response.content_type
            )

        app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_the_api_server_counts_as_reachable_even_when_it_refuses_the_anonymous_probe(
    apiserver: ApiServerHandle,
) -> None:
    probes = Probes(ProbeTargets(apiserver.url, str(apiserver.ca_cert)))
    try:
        assert await probes.direct()
        assert await probes.direct()  # again, over the kept-alive connection
    finally:
        await probes.close()
    closed = Probes(ProbeTargets("https://127.0.0.1:1", str(apiserver.ca_cert)))
    try:
        assert not await closed.direct()
    finally:
        await closed.close()


async def test_kubelet_role_and_relay_answers() -> None:
    up = '{"node": "n2", "pool": "p", "reachesCloud": true, "gateway": true}'
    down = '{"node": "n3", "pool": "p", "reachesCloud": false, "gateway": false}'
    runner, base = await serve(
        {
            "/healthz": web.Response(status=200, text="ok"),
            "/sick": web.Response(status=500, text="no"),
            "/role": web.Response(text='{"gateway": true}', content_type="application/json"),
            "/oldrole": web.Response(text="gateway", content_type="text/plain"),
            "/up/relay": web.Response(text=up, content_type="application/json"),
            "/down/relay": web.Response(status=503, text=down, content_type="application/json"),
        }
    )
    try:
        probes = Probes(
            ProbeTargets("https://127.0.0.1:1", None, f"{base}/healthz", f"{base}/role")
        )
        assert await probes.kubelet()
        assert await probes.gateway()
        assert await probes.relays([("n2", f"{base}/up"), ("n3", f"{base}/down")]) == (
            RelayAnswer("n2", f"{base}/up", ready=True, gateway=True),
            RelayAnswer("n3", f"{base}/down", ready=False, gateway=False),
        )
        await probes.close()
        sick = Probes(ProbeTargets("https://127.0.0.1:1", None, f"{base}/sick", f"{base}/oldrole"))
        assert not await sick.kubelet()
        assert not await sick.gateway()
        assert await sick.relay("n4", "http://127.0.0.1:1") == RelayAnswer(
            "n4", "http://127.0.0.1:1", ready=False
        )
        await sick.close()
    finally:
        await runner.cleanup()
