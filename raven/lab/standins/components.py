"""What each stand-in is: its User-Agent, its identity and rights, and what it lists and watches.

As the real components run on a kubeadm cluster:

- **kube-proxy** v1.30 (a DaemonSet, ServiceAccount ``kube-system/kube-proxy`` bound by
  ``kubeadm:node-proxier`` to the bootstrap ClusterRole ``system:node-proxier``) lists and
  watches Services and EndpointSlices in all namespaces, both with the label selector
  ``!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name`` (its informer
  factory's, as ``labels.Selector`` prints it);
- **CoreDNS** 1.11 (ServiceAccount ``kube-system/coredns``, ClusterRole ``system:coredns`` as
  kubeadm writes it) lists and watches Services, EndpointSlices and Namespaces in all
  namespaces, with no selector.

Identity, decided for the lab: each component acts as its own ServiceAccount, with one token
per node (as the kubelet projects one per pod), not as the node. That is what a cluster does,
and it is what node-level reuse must respect: two components of one node share a request but
not a credential, so a shared watch still answers each with what its own token may read.

Both real components ask for protobuf; the stand-ins ask for JSON (what the lab's clients
speak), about twice the bytes for the same objects, so the figures are an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raven.kube.resources import Resource

RBAC_GROUP = "rbac.authorization.k8s.io"
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace")
HEADLESS_LABEL = "service.kubernetes.io/headless"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
KUBE_PROXY_SELECTOR = f"!{HEADLESS_LABEL},!{PROXY_NAME_LABEL}"


@dataclass(frozen=True)
class Watched:
    """One informer: a resource in all namespaces, with a label selector or none."""

    resource: Resource
    label_selector: str = ""


@dataclass(frozen=True)
class Component:
    name: str
    user_agent: str
    service_account: tuple[str, str]  # (namespace, name)
    cluster_role: str
    watches: tuple[Watched, ...]

    @property
    def user(self) -> str:
        namespace, name = self.service_account
        return f"system:serviceaccount:{namespace}:{name}"


KUBE_PROXY = Component(
    name="kube-proxy",
    user_agent="kube-proxy/v1.30.0 (linux/amd64) kubernetes/7c48c2b",
    service_account=("kube-system", "kube-proxy"),
    cluster_role="system:node-proxier",  # kube-apiserver's own bootstrap role
    watches=(Watched(SERVICES, KUBE_PROXY_SELECTOR), Watched(ENDPOINTSLICES, KUBE_PROXY_SELECTOR)),
)
COREDNS = Component(
    name="coredns",
    user_agent="coredns/1.11.1 git_commit:ae2bbc2 (linux/amd64/go1.20.7)",
    service_account=("kube-system", "coredns"),
    cluster_role="system:coredns",
    watches=(Watched(SERVICES), Watched(ENDPOINTSLICES), Watched(NAMESPACES)),
)
COMPONENTS = {c.name: c for c in (KUBE_PROXY, COREDNS)}

# kubeadm's ClusterRole for CoreDNS (kube-apiserver has none).
COREDNS_ROLE: dict[str, Any] = {
    "apiVersion": f"{RBAC_GROUP}/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "system:coredns"},
    "rules": [
        {
            "apiGroups": [""],
            "resources": ["endpoints", "services", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ],
}


def _binding(name: str, role: str, account: tuple[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "namespace": account[0], "name": account[1]}],
    }


def rbac_objects() -> list[dict[str, Any]]:
    """The ServiceAccounts, kubeadm's ClusterRole for CoreDNS and both bindings, in the order
    they can be created."""
    accounts = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"namespace": c.service_account[0], "name": c.service_account[1]},
        }
        for c in COMPONENTS.values()
    ]
    return [
        *accounts,
        COREDNS_ROLE,
        _binding("kubeadm:node-proxier", KUBE_PROXY.cluster_role, KUBE_PROXY.service_account),
        _binding("system:coredns", COREDNS.cluster_role, COREDNS.service_account),
    ]
