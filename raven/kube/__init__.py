"""Kubernetes access for Raven: config, typed errors, list+watch caches, Lease election.

This package is the only place that talks to the Kubernetes API. Callers get plain dicts (the
JSON shape of objects) and the typed errors from :mod:`raven.kube.errors`.
"""

from raven.kube.client import ClientConfig, KubeClient, Timeouts, load_config
from raven.kube.election import LeaseElector, LeaseTimings
from raven.kube.errors import Conflict, KubeError, NotFound, PermanentError, TransientError
from raven.kube.gateways import ensure_gateway, patch_gateway_status
from raven.kube.informer import Backoff, Informer
from raven.kube.nodes import PUBLIC_KEY, TUNNEL_ENDPOINT, publish_tunnel_identity
from raven.kube.resources import GATEWAYS, NODES, Resource, leases

__all__ = [
    "GATEWAYS",
    "NODES",
    "PUBLIC_KEY",
    "TUNNEL_ENDPOINT",
    "Backoff",
    "ClientConfig",
    "Conflict",
    "KubeClient",
    "Informer",
    "KubeError",
    "LeaseElector",
    "LeaseTimings",
    "NotFound",
    "PermanentError",
    "Resource",
    "Timeouts",
    "TransientError",
    "ensure_gateway",
    "leases",
    "load_config",
    "patch_gateway_status",
    "publish_tunnel_identity",
]
