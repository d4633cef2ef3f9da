"""Fixtures shared by the unit tests that talk to the embedded API server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from raven.kube import KubeClient
from raven.lab.testing.kube import client_for_kubeconfig


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[Any]:
    """A fresh embedded API server with its own state dir."""
    from raven.lab.testing.apiserver import run_apiserver  # only the tests that need a server

    with run_apiserver(tmp_path / "api") as handle:
        yield handle


@pytest.fixture
async def kube(apiserver: Any) -> AsyncIterator[KubeClient]:
    """A Raven kube client for ``apiserver``, with short test timeouts."""
    client = client_for_kubeconfig(apiserver.kubeconfig)
    yield client
    await client.close()
