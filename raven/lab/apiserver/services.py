"""Addresses kube-apiserver allocates for a Service: a cluster IP and, when asked, node ports.

Cluster IPs come from kube-apiserver's usual service range 10.96.0.0/12 (10.96.0.1 stays free
for the ``kubernetes`` Service, as on a cluster); node ports from 30000-32767. The lowest free
one is taken, so allocation is deterministic. Nothing routes to them in the lab: a Service is
stored for ``kubectl apply`` and ``kubectl get``, not served.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from raven.lab.apiserver import errors

SERVICE_RANGE = ipaddress.ip_network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def allocate_service_addresses(obj: dict[str, Any], existing: Iterable[dict[str, Any]]) -> None:
    """Give a new Service its cluster IP (unless headless or ExternalName) and node ports."""
    spec = _spec(obj)
    others = list(existing)
    if spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
        used = {_spec(o).get("clusterIP") for o in others}
        wanted = spec.get("clusterIP")
        if wanted:
            if wanted in used:
                raise errors.invalid(
                    "Service",
                    "",
                    obj["metadata"].get("name", ""),
                    [
                        (
                            "spec.clusterIPs",
                            f"Invalid value: {[wanted]!r}: failed to allocate IP "
                            f"{wanted}: provided IP is already allocated",
                        )
                    ],
                )
        else:
            reserved = SERVICE_RANGE.network_address + 1  # the kubernetes Service's address
            for host in SERVICE_RANGE.hosts():
                if host != reserved and str(host) not in used:
                    spec["clusterIP"] = str(host)
                    break
        spec["clusterIPs"] = [spec["clusterIP"]]
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        taken = {
            p.get("nodePort")
            for o in others
            for p in _spec(o).get("ports") or []
            if isinstance(p, dict)
        }
        free = (n for n in NODE_PORTS if n not in taken)
        for port in spec.get("ports") or []:
            if isinstance(port, dict) and not port.get("nodePort"):
                port["nodePort"] = next(free)


def keep_service_addresses(new: dict[str, Any], old: dict[str, Any]) -> None:
    """An update that leaves out the allocated addresses keeps them."""
    spec, before = _spec(new), _spec(old)
    for key in ("clusterIP", "clusterIPs"):
        if not spec.get(key) and before.get(key):
            spec[key] = before[key]
