"""Errors the kernel-side adapters raise, each naming what was wrong."""

from __future__ import annotations


class NetlinkError(Exception):
    """Base of every error raised by :mod:`raven.netlink`."""


class BadSpec(NetlinkError):
    """A desired value cannot be applied as given (unknown device, malformed CIDR, ...)."""


class ApplyError(NetlinkError):
    """Some writes failed. ``failures`` maps what we tried (e.g. ``add 10.1.0.0/16``) to why;
    the writes that could be done were done."""

    def __init__(self, what: str, failures: dict[str, str]) -> None:
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
        super().__init__(f"{what}: {len(failures)} write(s) failed: {detail}")
        self.failures = failures
