"""Defaults and validation of ``discovery.k8s.io/v1`` EndpointSlices, as kube-apiserver applies
them (see :mod:`raven.lab.apiserver.kinds`).

What clients depend on: ``addressType`` is required, one of ``IPv4``, ``IPv6``, ``FQDN``, and
may not change; each endpoint has 1 to 100 addresses valid for that type (an IP address that
is not unspecified, loopback or link-local); at most 1000 endpoints and 20000 ports; a port's
name is empty or a DNS label, unique in the slice; its protocol defaults to TCP and must be
TCP, UDP or SCTP. As kube-apiserver answers them, ``endpoints`` and ``ports`` are ``null``
when empty (Go's nil slices), never ``[]``.

Not checked (kube-apiserver does): zone hints and the deprecated topology labels.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from raven.lab.apiserver.validation import dns_label, dns_subdomain, qualified_key

Problems = list[tuple[str, str]]
Obj = dict[str, Any]

ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
PROTOCOLS = ("SCTP", "TCP", "UDP")
MAX_ENDPOINTS = 1000
MAX_ADDRESSES = 100
MAX_PORTS = 20000
# The label the EndpointSlice controller sets: which Service a slice belongs to.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"

_FQDN = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def default_endpointslice(obj: Obj) -> None:
    """Ports get protocol TCP and an empty name; empty lists are stored as Go's nil."""
    for port in _list(obj.get("ports")):
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("name", "")
    for key in ("endpoints", "ports"):
        if not obj.get(key):
            obj[key] = None


def _address_problem(address: Any, kind: Any) -> str | None:
    if not isinstance(address, str):
        return "Invalid value: must be a string"
    if kind == "FQDN":
        if len(address) > 253 or not _FQDN.match(address):
            return f"Invalid value: {address!r}: should be a domain with at least two segments"
        return None
    if kind not in ("IPv4", "IPv6"):
        return None  # an unknown type is refused once, on addressType
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"Invalid value: {address!r}: must be a valid {kind} address"
    if (ip.version == 4) != (kind == "IPv4") or str(ip) != address:
        return f"Invalid value: {address!r}: must be a valid {kind} address"
    if ip.is_unspecified:
        return f"Invalid value: {address!r}: may not be unspecified (0.0.0.0)"
    if ip.is_loopback:
        return f"Invalid value: {address!r}: may not be in the loopback range"
    if ip.is_link_local or (ip.version == 4 and ip in ipaddress.ip_network("224.0.0.0/24")):
        return f"Invalid value: {address!r}: may not be in the link-local range"
    return None


def _endpoint_problems(endpoint: Any, kind: Any, where: str) -> Problems:
    if not isinstance(endpoint, dict):
        return [(where, "Invalid value: must be an object")]
    problems: Problems = []
    addresses = endpoint.get("addresses")
    if not isinstance(addresses, list) or not addresses:
        problems.append((f"{where}.addresses", "Required value: must contain at least 1 address"))
    elif len(addresses) > MAX_ADDRESSES:
        problems.append(
            (
                f"{where}.addresses",
                f"Too many: {len(addresses)}: must have at most {MAX_ADDRESSES} items",
            )
        )
    for i, address in enumerate(_list(addresses)):
        if (msg := _address_problem(address, kind)) is not None:
            problems.append((f"{where}.addresses[{i}]", msg))
    node = endpoint.get("nodeName")
    if node is not None and (not isinstance(node, str) or dns_subdomain(node)):
        problems.append((f"{where}.nodeName", f"Invalid value: {node!r}"))
    hostname = endpoint.get("hostname")
    if hostname is not None and (not isinstance(hostname, str) or dns_label(hostname)):
        problems.append((f"{where}.hostname", dns_label(str(hostname)) or "Invalid value"))
    conditions = endpoint.get("conditions")
    if conditions is not None and not isinstance(conditions, dict):
        problems.append((f"{where}.conditions", "Invalid value: must be an object"))
    return problems


def _port_problems(ports: list[Any]) -> Problems:
    problems: Problems = []
    names: set[str] = set()
    for i, port in enumerate(ports):
        where = f"ports[{i}]"
        if not isinstance(port, dict):
            problems.append((where, "Invalid value: must be an object"))
            continue
        name = port.get("name", "")
        if not isinstance(name, str):
            problems.append((f"{where}.name", "Invalid value: must be a string"))
            continue
        if name and (msg := dns_label(name)) is not None:
            problems.append((f"{where}.name", msg))
        if name in names:
            problems.append((f"{where}.name", f'Duplicate value: "{name}"'))
        names.add(name)
        protocol = port.get("protocol")
        if protocol is None:
            problems.append((f"{where}.protocol", "Required value"))
        elif protocol not in PROTOCOLS:
            problems.append(
                (
                    f"{where}.protocol",
                    f"Unsupported value: {protocol!r}: supported values: {_quoted(PROTOCOLS)}",
                )
            )
        number = port.get("port")
        if number is not None and (
            not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < 2**31
        ):
            problems.append((f"{where}.port", f"Invalid value: {number!r}: must be an int32"))
        app = port.get("appProtocol")
        if app is not None and (not isinstance(app, str) or qualified_key(app)):
            problems.append((f"{where}.appProtocol", f"Invalid value: {app!r}"))
    return problems


def endpointslice_problems(obj: Obj, old: Obj | None) -> Problems:
    """Validation errors of an EndpointSlice (``old``: the stored one, on update)."""
    problems: Problems = []
    kind = obj.get("addressType")
    if not kind:
        problems.append(("addressType", "Required value"))
    elif kind not in ADDRESS_TYPES:
        problems.append(
            (
                "addressType",
                f"Unsupported value: {kind!r}: supported values: {_quoted(ADDRESS_TYPES)}",
            )
        )
    endpoints, ports = obj.get("endpoints"), obj.get("ports")
    if endpoints is not None and not isinstance(endpoints, list):
        problems.append(("endpoints", "Invalid value: must be a list"))
    elif len(_list(endpoints)) > MAX_ENDPOINTS:
        many = len(_list(endpoints))
        problems.append(("endpoints", f"Too many: {many}: must have at most {MAX_ENDPOINTS} items"))
    else:
        for i, endpoint in enumerate(_list(endpoints)):
            problems += _endpoint_problems(endpoint, kind, f"endpoints[{i}]")
    if ports is not None and not isinstance(ports, list):
        problems.append(("ports", "Invalid value: must be a list"))
    elif len(_list(ports)) > MAX_PORTS:
        many = len(_list(ports))
        problems.append(("ports", f"Too many: {many}: must have at most {MAX_PORTS} items"))
    else:
        problems += _port_problems(_list(ports))
    if old is not None and old.get("addressType") != kind:
        problems.append(("addressType", "Invalid value: field is immutable"))
    return problems


def _more(items: list[str], count: int, most: int = 3) -> str:
    """kubectl's ``listWithMoreString``: the first three, then how many more."""
    shown = ",".join(items[:most])
    if count > most:
        return f"{shown} + {count - most} more..."
    return shown or "<unset>"


def printed_ports(obj: Obj) -> str:
    """The PORTS column: each port's number, else its name, else ``*``."""
    out = []
    for port in _list(obj.get("ports")):
        port = port if isinstance(port, dict) else {}
        if port.get("port") is not None:
            out.append(str(port["port"]))
        elif port.get("name") is not None:
            out.append(str(port["name"]))
        else:
            out.append("*")
    return _more(out, len(out))


def printed_endpoints(obj: Obj) -> str:
    """The ENDPOINTS column: every endpoint's addresses, the first three shown."""
    addresses = [
        str(a)
        for e in _list(obj.get("endpoints"))
        if isinstance(e, dict)
        for a in _list(e.get("addresses"))
    ]
    return _more(addresses, len(addresses))
