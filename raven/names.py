"""Every Kubernetes name Raven reads or writes, spelled once: labels, annotations, Lease naming.

Other modules import these instead of writing the strings again, so a rename is one edit and a
reader finds every name Raven puts into a cluster on this page.
"""

from __future__ import annotations

import re

#: Node label that puts a node in a pool (OpenYurt's; the agent's ``pool_label`` setting can
#: name another).
POOL_LABEL = "apps.openyurt.io/nodepool"

#: Node annotations the agent writes before any election, so a failover never waits for them.
PUBLIC_KEY_ANNOTATION = "raven.io/public-key"  # WireGuard public key, base64 of 32 bytes
TUNNEL_ENDPOINT_ANNOTATION = "raven.io/tunnel-endpoint"  # host:port, when the node has one
PROBE_ANNOTATION = "raven.io/probe-address"  # an address inside the node's pod CIDRs

#: One coordination.k8s.io/v1 Lease per pool records its gateway: ``raven-gw-<pool>`` in the
#: agent's ``lease_namespace``, labelled with the pool so a node can watch only the pools it
#: needs.
LEASE_PREFIX = "raven-gw-"
LEASE_POOL_LABEL = "raven.io/pool"
DEFAULT_LEASE_NAMESPACE = "kube-system"


#: Label the relay's gateway keeps on every Gateway: "true" while its spec.relay is, so the
#: other nodes can watch just the relay's Gateway (and their own) instead of every pool's.
RELAY_LABEL = "raven.io/relay"

#: Node heartbeats: the kubelet renews ``kube-node-lease/<node>``. While ``raven-heartbeat``
#: sends a node's cloud traffic through a pool member, that Lease carries OpenYurt's annotation
#: (so tools built for OpenYurt understand it) and the relaying node's name.
NODE_LEASE_NAMESPACE = "kube-node-lease"
DELEGATE_HEARTBEAT_ANNOTATION = "openyurt.io/delegate-heartbeat"
HEARTBEAT_VIA_ANNOTATION = "raven.io/heartbeat-via"
#: OpenYurt's taint for a node whose heartbeat is delegated (``raven-heartbeat
#: --taint-delegated``, off by default).
UNSCHEDULABLE_TAINT_KEY = "node.openyurt.io/unschedulable"


def lease_name(pool: str) -> str:
    """The name of ``pool``'s Lease."""
    return f"{LEASE_PREFIX}{pool}"


def pool_of_lease(name: str) -> str | None:
    """The pool a Lease name belongs to, or None when it is not one of Raven's."""
    if name.startswith(LEASE_PREFIX) and len(name) > len(LEASE_PREFIX):
        return name[len(LEASE_PREFIX) :]
    return None


# A DNS-1123 label: what each dot-separated part of an object name must be. Always fullmatch:
# ``$`` would let a trailing newline through.
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def valid_name(name: object, *, limit: int = 253) -> bool:
    """Is ``name`` a valid Kubernetes object name (DNS-1123 subdomain) of at most ``limit``
    characters? A pool name becomes a Gateway's and a Lease's name and is a label value, so it
    must be one of at most 63."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= limit
        and all(_DNS_LABEL.fullmatch(part) for part in name.split("."))
    )
