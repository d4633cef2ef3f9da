"""Kubeconfig files for kubectl, the agents and the tests: a bearer-token user or a
client-certificate user (a node's identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raven.secretfile import write_secret


def _user(token: str | None, client_cert: Path | None, client_key: Path | None) -> dict[str, Any]:
    pair = (client_cert, client_key)
    if token is not None and any(p is not None for p in pair):
        raise ValueError("a kubeconfig user has a token or a client certificate, not both")
    if token is not None:
        return {"token": token}
    if client_cert is None or client_key is None:
        raise ValueError("a kubeconfig user needs a token or a client certificate and its key")
    return {"client-certificate": str(client_cert), "client-key": str(client_key)}


def render_kubeconfig(
    server: str,
    ca_cert: Path,
    token: str | None = None,
    *,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    name: str = "raven-lab",
) -> str:
    """A kubeconfig with one cluster, one user and one current context. The user has either
    ``token`` or the ``client_cert``/``client_key`` pair (referred to by path), exactly one."""
    user = _user(token, client_cert, client_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority": str(ca_cert)}}
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_kubeconfig(
    path: Path,
    server: str,
    ca_cert: Path,
    token: str | None = None,
    *,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    name: str = "raven-lab",
) -> Path:
    """Write the kubeconfig (it may hold a token) with mode 0600, whatever the mode of a file
    already there, atomically; returns its path."""
    text = render_kubeconfig(
        server, ca_cert, token, client_cert=client_cert, client_key=client_key, name=name
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_secret(path, text)
