"""Fixtures for the container tests: a Docker engine, Raven's image, rendered manifests.

The engine is found or started once per session (raven/lab/dockerd.py: Raven's own dockerd when
none runs, stopped again by its last user); the image is built once per session with
deploy/build-image.sh, which reuses the cached base and layers, so only what changed is rebuilt.
Whatever container a test starts carries the label tests/docker/kubelet.py sets, and the session
removes every one of them at the end, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raven.lab.dockerd import DockerError, Engine, engine
from tests.manifests import DEPLOY, Obj, from_files, from_kubectl, pod_spec

from .kubelet import remove_labelled

pytestmark = pytest.mark.root
IMAGE_SIZE_GOAL_MB = 200


@pytest.fixture(scope="session")
def docker() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.fail("the container tests need root (a Docker engine, network namespaces)")
    try:
        with engine() as eng:
            try:
                yield eng
            finally:
                remove_labelled(eng)
    except DockerError as error:
        pytest.fail(f"no Docker engine: {error}")


@pytest.fixture(scope="session")
def manifests() -> list[Obj]:
    """deploy/ as `kubectl apply -k` would send it (read from the files without kubectl)."""
    return from_kubectl(DEPLOY) if shutil.which("kubectl") else from_files(DEPLOY)


@pytest.fixture(scope="session")
def image(docker: Engine, manifests: list[Obj]) -> str:
    """The image the DaemonSet names, built from this checkout."""
    tag: str = pod_spec(manifests)["containers"][0]["image"]
    start = time.monotonic()
    proc = subprocess.run(
        [str(DEPLOY / "build-image.sh"), "--tag", tag],
        env=docker.env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"image build failed:\n{proc.stderr[-4000:]}"
    print(f"\n{proc.stdout.strip()} (session fixture: {time.monotonic() - start:.0f} s)")
    return tag


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    """A folder standing for a node's `/` (its hostPath volumes live under it)."""
    root = tmp_path / "node"
    root.mkdir()
    return root
