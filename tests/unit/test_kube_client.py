"""Config loading and the typed error tree of the REST client."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from raven.kube import NODES, KubeClient, Timeouts, load_config
from raven.kube.client import ClientConfig
from raven.kube.errors import Conflict, NotFound, PermanentError, TransientError

# A hung server must fail one test fast, not stall the suite.
pytestmark = pytest.mark.timeout(60)


def write(tmp_path: Path, doc: Any) -> Path:
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(doc))
    return p


def kubeconfig(server: str = "https://127.0.0.1:6443", **user: Any) -> dict[str, Any]:
    return {
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": "ca.pem"}}
        ],
        "users": [{"name": "u", "user": user or {"token": "t0k"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }


def test_kubeconfig_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, kubeconfig()))
    assert cfg.server == "https://127.0.0.1:6443"
    assert cfg.ca_file == str(tmp_path / "ca.pem")
    assert cfg.token == "t0k"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("just a string", "not a mapping"),
        ({**kubeconfig(), "current-context": "missing"}, "no context named 'missing'"),
        (kubeconfig(server="ftp://x"), "cluster.server 'ftp://x'"),
        (kubeconfig(exec={"command": "aws"}), "exec"),
        (kubeconfig(**{"client-key-data": "%%%"}), "client-key-data is not valid base64"),
    ],
)
def test_bad_kubeconfig_names_the_problem(tmp_path: Path, doc: Any, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        load_config(write(tmp_path, doc))


def test_missing_kubeconfig_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="cannot read"):
        load_config(tmp_path / "nope")


async def test_http_errors_map_to_the_typed_tree(kube: KubeClient) -> None:
    with pytest.raises(NotFound) as nf:
        await kube.get(NODES, "ghost")
    assert nf.value.status == 404
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}
    created = await kube.create(NODES, node)
    with pytest.raises(Conflict) as dup:
        await kube.create(NODES, node)
    assert dup.value.reason == "AlreadyExists"
    # An update carrying a stale resourceVersion conflicts.
    await kube.merge_patch(NODES, "n1", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(Conflict):
        await kube.replace(NODES, created)


async def test_bad_token_is_permanent(apiserver: Any) -> None:
    base = load_config(apiserver.kubeconfig)
    cfg = ClientConfig(server=base.server, ca_file=base.ca_file, token="wrong")
    async with KubeClient(cfg) as client:
        with pytest.raises(PermanentError) as err:
            await client.get(NODES, "n1")
    assert err.value.status == 401


async def test_untrusted_server_certificate_is_permanent(apiserver: Any) -> None:
    base = load_config(apiserver.kubeconfig)
    cfg = ClientConfig(server=base.server, token=base.token)  # system CAs only
    async with KubeClient(cfg) as client:
        with pytest.raises(PermanentError, match="TLS"):
            await client.get(NODES, "n1")


async def test_connection_refused_is_transient_with_cause() -> None:
    # A port bound for the whole test but never listening: nothing else can take it meanwhile,
    # and every connection to it is refused.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        cfg = ClientConfig(server=f"http://127.0.0.1:{bound.getsockname()[1]}")
        async with KubeClient(cfg) as client:
            with pytest.raises(TransientError) as err:
                await client.get(NODES, "n1")
    assert isinstance(err.value.__cause__, aiohttp.ClientError)
    assert err.value.delay > 0


async def test_silent_server_hits_the_read_timeout() -> None:
    # A loopback server that accepts and never answers, like a hung API server.
    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = ClientConfig(server=f"http://127.0.0.1:{port}", timeouts=Timeouts(1.0, 0.5))
        async with KubeClient(cfg) as client:
            # The configured 0.5 s read timeout ends the call, not the 15 s default: a call
            # that lasts past this deadline fails the test however slow the machine is.
            async with asyncio.timeout(Timeouts().read / 2):
                with pytest.raises(TransientError) as err:
                    await client.get(NODES, "n1")
        assert isinstance(err.value.__cause__, aiohttp.ServerTimeoutError), err.value
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "credentials",
    [
        {"token": "s3cret"},
        {"token_file": "/var/run/token"},
        {"cert_data": b"cert", "key_data": b"key"},
    ],
)
async def test_no_credential_is_sent_to_a_plain_http_server(credentials: dict[str, Any]) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        with pytest.raises(PermanentError, match=f"refusing to send credentials to {url}"):
            async with KubeClient(ClientConfig(server=url, **credentials)) as client:
                await client.get(NODES, "n1")
        await asyncio.sleep(0.2)  # give a request that was sent time to arrive
    finally:
        server.close()
        await server.wait_closed()
    assert seen == []


def test_kubeconfig_with_a_token_for_an_http_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="refusing to send credentials to http://10.0.0.1"):
        load_config(write(tmp_path, kubeconfig(server="http://10.0.0.1:8080")))
