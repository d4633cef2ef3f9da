"""Helpers for tests that use :mod:`raven.kube` against a real (or the lab's) API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from raven.kube.client import KubeClient, Timeouts, load_config
from raven.kube.errors import Conflict
from raven.kube.resources import Resource

CRDS = Resource(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition"
)
CRD_DIR = Path(__file__).resolve().parents[3] / "deploy" / "crds"


def client_for_kubeconfig(
    path: str | Path, *, connect: float = 2.0, read: float = 5.0
) -> KubeClient:
    """A client with short timeouts, for tests."""
    return KubeClient(load_config(path, timeouts=Timeouts(connect=connect, read=read)))


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, *, interval: float = 0.02, what: str = ""
) -> float:
    """Poll ``predicate`` until true; return the seconds it took. AssertionError on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def install_crds(client: KubeClient, crd_dir: Path = CRD_DIR) -> list[str]:
    """Create every CRD in ``crd_dir`` (already present is fine) and wait until each is served."""
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        try:
            await client.create(CRDS, crd)
        except Conflict:
            pass

    def established(crd: dict[str, object]) -> bool:
        conditions = (crd.get("status") or {}).get("conditions") or []  # type: ignore[attr-defined]
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    for name in names:
        start = time.monotonic()
        while not established(await client.get(CRDS, name)):
            if time.monotonic() - start > 10:
                raise AssertionError(f"CRD {name} not established after 10 s")
            await asyncio.sleep(0.05)
    return names
