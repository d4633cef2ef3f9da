"""Kernel-side reconcilers: Raven's routes, its policy rule, forwarding and the TCP MSS clamp.

Only this package (and :mod:`gateway.wireguard`) touches the kernel. Every reconciler diffs the
desired values from :mod:`raven.model` against a fresh dump of *Raven's own* entries and writes
only the difference, so a reconcile with nothing to change makes zero writes.
"""
