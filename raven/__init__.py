"""Raven: layer-3 connectivity across the node pools of an edge Kubernetes cluster.

The package holds the shared core: API types, pure planning, kernel and WireGuard drivers,
Kubernetes access, the CLI and the lab with its embedded API server.
"""

__version__ = "0.1.0"
