"""Ordering Kubernetes resourceVersions, for copies of one object that may arrive out of order.

resourceVersions are opaque strings to clients, but every API server in practice (etcd's
revisions; the lab's) hands out growing integers. Raven compares them only to refuse going
back in time: a lagging watch, or a cache proxy's older copy while the cloud is away, must
never undo what a newer copy already said.
"""

from __future__ import annotations


def newer(version: object, than: object) -> bool:
    """Is ``version`` later than ``than``? When either is not an integer, any different
    version counts as later (the API server's order cannot be known then)."""
    if version == than:
        return False
    try:
        return int(str(version)) > int(str(than))
    except ValueError:
        return True
