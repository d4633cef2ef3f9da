"""Kubeconfig files for kubectl, the agents and the tests."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def render_kubeconfig(server: str, ca_cert: Path, token: str, *, name: str = "raven-lab") -> str:
    """A kubeconfig with one cluster, one token user and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(
    path: Path, server: str, ca_cert: Path, token: str, *, name: str = "raven-lab"
) -> Path:
    """Write the kubeconfig with mode 0600 (it holds the token) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_kubeconfig(server, ca_cert, token, name=name))
    return path
