"""Kubeconfig files for kubectl, the agents and the tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from raven.secretfile import write_secret


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
    """Write the kubeconfig (it holds the token) with mode 0600, whatever the mode of a file
    already there, atomically; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_secret(path, render_kubeconfig(server, ca_cert, token, name=name))
