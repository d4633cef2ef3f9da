"""How a planned data path is applied: the ordered steps, as values. Pure.

:func:`steps_for` turns a :class:`~raven.model.DesiredState` into the exact sequence of calls
the data plane receives, so the order that keeps traffic flowing is decided (and tested) here,
not buried in the adapter:

* the WireGuard device exists, with its peers, before any route points into it;
* Raven's VXLAN link exists before a member's routes point into it;
* routes are in Raven's table before the rule sends lookups there;
* a VXLAN link that is no longer wanted goes only after the routes have left it.

Every step is idempotent on the data plane (each one diffs against the kernel and writes only
the difference), so the full sequence runs on every apply. A step marked ``required`` aborts
the rest when it fails (a member's routes would lead into a link that is not there); any other
failure is reported and the later steps still run, so one bad peer never keeps routes and the
rule from being reconciled.
"""

from __future__ import annotations

from dataclasses import dataclass

from raven.model import DesiredState, PeerSpec, Role, RouteSpec, RuleSpec, VxlanSpec


@dataclass(frozen=True)
class EnsureTunnel:
    """The WireGuard device: present, keyed, listening on ``port``, ``mtu`` set, up."""

    port: int | None
    mtu: int | None


@dataclass(frozen=True)
class SetPeers:
    """Exactly these WireGuard peers on the device; with none, a device that exists keeps no
    peer (it stays, so a re-election needs no new process) and a missing one is not made."""

    peers: tuple[PeerSpec, ...]


@dataclass(frozen=True)
class EnableForwarding:
    """IPv4 forwarding on (never switched off: other components may rely on it)."""


@dataclass(frozen=True)
class ClampMss:
    """The TCP MSS clamp for forwarded SYNs leaving through ``dev``."""

    dev: str


@dataclass(frozen=True)
class SetVxlan:
    """Raven's VXLAN link as ``spec`` says, or removed when ``spec`` is None."""

    spec: VxlanSpec | None
    required: bool = False


@dataclass(frozen=True)
class SetRoutes:
    """Exactly these routes in Raven's table. ``resync``: compare with a fresh dump of the
    table; otherwise trust what the reconciler last wrote (a change from the cluster)."""

    routes: tuple[RouteSpec, ...]
    resync: bool = True


@dataclass(frozen=True)
class SetRules:
    """Exactly these policy rules of Raven's."""

    rules: tuple[RuleSpec, ...]


Step = EnsureTunnel | SetPeers | EnableForwarding | ClampMss | SetVxlan | SetRoutes | SetRules


def steps_for(desired: DesiredState, *, wg_dev: str, resync: bool) -> tuple[Step, ...]:
    """The calls that make the data path ``desired``, in the order that keeps traffic flowing
    (module docstring)."""
    steps: list[Step] = []
    if desired.role in (Role.GATEWAY, Role.RELAY):
        steps += [
            EnsureTunnel(desired.listen_port, desired.tunnel_mtu),
            SetPeers(desired.peers),
            EnableForwarding(),
            ClampMss(wg_dev),
        ]
    else:
        steps.append(SetPeers(()))
    if desired.vxlan is not None:
        # A member's routes all lead into the link; a gateway still carries its on-link
        # members and its own pods without it.
        steps.append(SetVxlan(desired.vxlan, required=desired.role == Role.MEMBER))
    steps += [SetRoutes(desired.routes, resync=resync), SetRules(desired.rules)]
    if desired.vxlan is None:
        steps.append(SetVxlan(None))
    return tuple(steps)
