"""Read deploy/ as `kubectl kustomize` renders it, or straight from the files it lists."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
NAMESPACE = "raven-system"

Obj = dict[str, Any]


def from_files(folder: Path = DEPLOY) -> list[Obj]:
    """The objects of the resources a kustomization lists, in order, without kustomize."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objs: list[Obj] = []
    for resource in kustomization["resources"]:
        objs += [d for d in yaml.safe_load_all((folder / resource).read_text()) if d]
    return objs


def from_kubectl(folder: Path = DEPLOY) -> list[Obj]:
    """`kubectl kustomize FOLDER`, parsed; AssertionError with kubectl's message on failure."""
    proc = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed: {proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def one(objs: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: {len(found)} objects"
    return found[0]


def pod_spec(objs: list[Obj], name: str = "raven") -> Obj:
    """The pod template's spec of DaemonSet ``name`` in raven-system."""
    spec: Obj = one(objs, "DaemonSet", name, NAMESPACE)["spec"]["template"]["spec"]
    return spec
