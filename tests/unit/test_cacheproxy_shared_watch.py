"""A watch answered from a shared copy gets every change, also those the reflector applies while
the client is being written to (a slow client, a loaded node): none is skipped, none repeated."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import make_mocked_request

from raven.cacheproxy.shared import SharedReads
from raven.cacheproxy.sharing import SERVICES, SharedRead
from raven.cacheproxy.watchcache import stored
from raven.selectors import FieldSelector, LabelSelector


def service(name: str, rv: int) -> Any:
    return stored({"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv)}})


async def test_changes_applied_while_a_client_is_written_to_reach_it_next() -> None:
    reads = SharedReads(
        (SERVICES,),
        None,  # type: ignore[arg-type]  # no upstream: the copy is fed by the test
        "https://127.0.0.1:1",
        lambda: None,  # type: ignore[arg-type,return-value]
        None,  # type: ignore[arg-type]
        capacity=100,
        review_ttl=60,
    )
    reflector = reads.reflectors[SERVICES]
    cache = reflector.cache
    cache.replace([], 10)
    cache.apply("ADDED", service("a", 11))
    written: list[bytes] = []

    async def slow_write(resp: Any, data: bytes) -> None:
        written.append(data)
        if len(written) == 1:  # the reflector goes on while this client is written to
            await asyncio.sleep(0)
            cache.apply("ADDED", service("b", 12))
            reflector._wake()
        if b'"b"' in data:
            reads.stopping.set()
            reflector._wake()

    reads._write = slow_write  # type: ignore[method-assign]
    read = SharedRead(SERVICES, "watch", "", LabelSelector(), FieldSelector(), "10", timeout=5)
    request = make_mocked_request("GET", "/api/v1/services?watch=true&resourceVersion=10")
    await asyncio.wait_for(reads._watch(request, read), 5)
    names = [n for chunk in written for n in ("a", "b") if f'"name":"{n}"'.encode() in chunk]
    assert names == ["a", "b"]
