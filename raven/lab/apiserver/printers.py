"""``kubectl get`` columns of the deployment kinds, as kube-apiserver's table printers give them.

Each entry maps (group, plural) to the columns after Name — (name, type, priority, description);
priority 1 shows only with ``-o wide`` — and a function from the object to those cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raven.lab.apiserver.durations import age
from raven.lab.apiserver.endpointslices import printed_endpoints, printed_ports

Obj = dict[str, Any]
Column = tuple[str, str, int, str]


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _age(o: Obj) -> str:
    return age(_d(o.get("metadata")).get("creationTimestamp"))


def _pairs(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(_d(labels).items())) or "<none>"


def _selector(selector: Any) -> str:
    parts = [f"{k}={v}" for k, v in sorted(_d(_d(selector).get("matchLabels")).items())]
    for expr in _l(_d(selector).get("matchExpressions")):
        e = _d(expr)
        values = ",".join(str(v) for v in _l(e.get("values")))
        op = e.get("operator")
        if op == "In":
            parts.append(f"{e.get('key')} in ({values})")
        elif op == "NotIn":
            parts.append(f"{e.get('key')} notin ({values})")
        elif op == "Exists":
            parts.append(str(e.get("key")))
        elif op == "DoesNotExist":
            parts.append(f"!{e.get('key')}")
    return ",".join(parts) or "<none>"


def _daemonset(o: Obj) -> list[Any]:
    status, spec = _d(o.get("status")), _d(o.get("spec"))
    pod = _d(_d(spec.get("template")).get("spec"))
    containers = [_d(c) for c in _l(pod.get("containers"))]
    return [
        int(status.get("desiredNumberScheduled") or 0),
        int(status.get("currentNumberScheduled") or 0),
        int(status.get("numberReady") or 0),
        int(status.get("updatedNumberScheduled") or 0),
        int(status.get("numberAvailable") or 0),
        _pairs(pod.get("nodeSelector")),
        _age(o),
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
        _selector(spec.get("selector")),
    ]


def _ports(spec: Obj) -> str:
    out = []
    for p in (_d(p) for p in _l(spec.get("ports"))):
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _service(o: Obj) -> list[Any]:
    spec = _d(o.get("spec"))
    kind = spec.get("type", "ClusterIP")
    ingress = [_d(i) for i in _l(_d(_d(o.get("status")).get("loadBalancer")).get("ingress"))]
    external = [str(i.get("ip") or i.get("hostname")) for i in ingress]
    external += [str(ip) for ip in _l(spec.get("externalIPs"))]
    if kind == "ExternalName":
        external_text = str(spec.get("externalName", "<none>"))
    elif kind == "LoadBalancer" and not external:
        external_text = "<pending>"
    else:
        external_text = ",".join(external) or "<none>"
    return [
        kind,
        spec.get("clusterIP") or "<none>",
        external_text,
        _ports(spec),
        _age(o),
        _pairs(spec.get("selector")),
    ]


def _binding(o: Obj) -> list[Any]:
    ref = _d(o.get("roleRef"))
    subjects = [_d(s) for s in _l(o.get("subjects"))]

    def names(kind: str) -> str:
        return ",".join(str(s.get("name")) for s in subjects if s.get("kind") == kind)

    accounts = ",".join(
        f"{s.get('namespace', '')}/{s.get('name')}"
        for s in subjects
        if s.get("kind") == "ServiceAccount"
    )
    return [
        f"{ref.get('kind')}/{ref.get('name')}",
        _age(o),
        names("User"),
        names("Group"),
        accounts,
    ]


def _created(o: Obj) -> list[Any]:
    return [_d(o.get("metadata")).get("creationTimestamp", "")]


_AGE: Column = ("Age", "string", 0, "CreationTimestamp")

PRINTERS: dict[tuple[str, str], tuple[list[Column], Callable[[Obj], list[Any]]]] = {
    ("apps", "daemonsets"): (
        [
            ("Desired", "integer", 0, "The desired number of nodes that should run the pod."),
            ("Current", "integer", 0, "The number of nodes running at least one pod."),
            ("Ready", "integer", 0, "The number of nodes with a ready pod."),
            ("Up-to-date", "integer", 0, "The number of nodes running the updated pod."),
            ("Available", "integer", 0, "The number of nodes with an available pod."),
            ("Node Selector", "string", 0, "The node selector of the pod template."),
            _AGE,
            ("Containers", "string", 1, "Names of each container in the template."),
            ("Images", "string", 1, "Images referenced by each container in the template."),
            ("Selector", "string", 1, "Label selector for pods."),
        ],
        _daemonset,
    ),
    ("", "serviceaccounts"): (
        [("Secrets", "integer", 0, "Secrets of the service account."), _AGE],
        lambda o: [len(_l(o.get("secrets"))), _age(o)],
    ),
    ("", "configmaps"): (
        [("Data", "integer", 0, "Number of keys."), _AGE],
        lambda o: [len(_d(o.get("data"))) + len(_d(o.get("binaryData"))), _age(o)],
    ),
    ("", "secrets"): (
        [("Type", "string", 0, "The type of secret"), ("Data", "integer", 0, "Keys."), _AGE],
        lambda o: [o.get("type", ""), len(_d(o.get("data"))), _age(o)],
    ),
    ("", "services"): (
        [
            ("Type", "string", 0, "The type of the service."),
            ("Cluster-IP", "string", 0, "The cluster IP of the service."),
            ("External-IP", "string", 0, "The external IPs of the service."),
            ("Port(s)", "string", 0, "The ports of the service."),
            _AGE,
            ("Selector", "string", 1, "The selector of the service."),
        ],
        _service,
    ),
    ("discovery.k8s.io", "endpointslices"): (
        [
            ("AddressType", "string", 0, "The type of address carried by this EndpointSlice."),
            ("Ports", "string", 0, "The network ports exposed by each endpoint."),
            ("Endpoints", "string", 0, "The unique endpoints in this slice."),
            _AGE,
        ],
        lambda o: [o.get("addressType", ""), printed_ports(o), printed_endpoints(o), _age(o)],
    ),
    ("rbac.authorization.k8s.io", "roles"): (
        [("Created At", "date", 0, "CreationTimestamp")],
        _created,
    ),
    ("rbac.authorization.k8s.io", "clusterroles"): (
        [("Created At", "date", 0, "CreationTimestamp")],
        _created,
    ),
    ("rbac.authorization.k8s.io", "rolebindings"): (
        [
            ("Role", "string", 0, "The role referenced."),
            _AGE,
            ("Users", "string", 1, "Users in the binding."),
            ("Groups", "string", 1, "Groups in the binding."),
            ("ServiceAccounts", "string", 1, "ServiceAccounts in the binding."),
        ],
        _binding,
    ),
    ("rbac.authorization.k8s.io", "clusterrolebindings"): (
        [
            ("Role", "string", 0, "The role referenced."),
            _AGE,
            ("Users", "string", 1, "Users in the binding."),
            ("Groups", "string", 1, "Groups in the binding."),
            ("ServiceAccounts", "string", 1, "ServiceAccounts in the binding."),
        ],
        _binding,
    ),
    ("scheduling.k8s.io", "priorityclasses"): (
        [
            ("Value", "integer", 0, "The priority value."),
            ("Global-Default", "boolean", 0, "Whether it is the default priority class."),
            _AGE,
            ("PreemptionPolicy", "string", 0, "The preemption policy."),
        ],
        lambda o: [
            o.get("value"),
            bool(o.get("globalDefault", False)),
            _age(o),
            o.get("preemptionPolicy", ""),
        ],
    ),
}
