"""Where each kind Raven uses lives in the REST API.

A :class:`Resource` turns (kind, namespace, name) into a URL path, the same way for core,
grouped and custom resources.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.names import DEFAULT_LEASE_NAMESPACE


@dataclass(frozen=True)
class Resource:
    """One REST collection, e.g. ``/api/v1/nodes`` or ``/apis/raven.io/v1alpha1/gateways``."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespace: str | None = None  # None: cluster-scoped

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespace is not None:
            return f"{base}/namespaces/{self.namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, name: str, subresource: str | None = None) -> str:
        if not name or "/" in name:
            raise ValueError(f"bad {self.kind} name {name!r}: must be non-empty without '/'")
        path = f"{self.collection_path()}/{name}"
        return f"{path}/{subresource}" if subresource else path


NODES = Resource("", "v1", "nodes", "Node")
GATEWAYS = Resource("raven.io", "v1alpha1", "gateways", "Gateway")


def leases(namespace: str = DEFAULT_LEASE_NAMESPACE) -> Resource:
    """coordination.k8s.io/v1 Leases in ``namespace``."""
    if not namespace:
        raise ValueError("lease namespace must not be empty")
    return Resource("coordination.k8s.io", "v1", "leases", "Lease", namespace)
