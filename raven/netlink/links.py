"""Interface name <-> index look-ups for one network namespace (reads only, never writes)."""

from __future__ import annotations

from typing import Any

from raven.netlink.errors import BadSpec


class LinkIndex:
    """A snapshot of the namespace's links, taken once per reconcile.

    Reconcilers resolve ``RouteSpec.dev`` names here, so the planner can stay free of interface
    indexes and a renamed or recreated link is picked up on the next reconcile.
    """

    def __init__(self, ipr: Any) -> None:
        self.by_name: dict[str, int] = {}
        self.by_index: dict[int, str] = {}
        for link in ipr.get_links():
            name = link.get("IFLA_IFNAME") or link.get("ifname")
            if name is None:
                continue
            self.by_name[name] = link["index"]
            self.by_index[link["index"]] = name

    def index(self, name: str) -> int:
        try:
            return self.by_name[name]
        except KeyError:
            raise BadSpec(f"route device {name!r} does not exist in this namespace") from None

    def name(self, index: int | None) -> str | None:
        if index is None:
            return None
        return self.by_index.get(index, f"if{index}")
