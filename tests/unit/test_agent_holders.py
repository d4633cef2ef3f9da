"""The agent keeps following a pool's last holder while its Lease names nobody, and reports
only the peers that carry traffic."""

from __future__ import annotations

from typing import Any

from agent.runtime import carrying, sticky_holders
from raven.model import DesiredState, PeerSpec, Role


def lease(holder: str | None) -> dict[str, Any]:
    return {"spec": {"holderIdentity": holder or ""}}


def names(leases: dict[str, Any]) -> dict[str, str]:
    return {p: lease_obj["spec"]["holderIdentity"] for p, lease_obj in leases.items()}


def test_released_lease_keeps_the_last_holder_until_someone_takes_it() -> None:
    last: dict[str, str] = {}
    assert names(sticky_holders({"a": lease("a1"), "b": lease("b1")}, last)) == {
        "a": "a1",
        "b": "b1",
    }
    # a1 released (graceful stop or step-down): nobody holds edge-a, so keep a1 meanwhile.
    assert names(sticky_holders({"a": lease(None), "b": lease("b1")}, last)) == {
        "a": "a1",
        "b": "b1",
    }
    # The Lease object vanished from the snapshot: same.
    assert names(sticky_holders({"b": lease("b1")}, last)) == {"a": "a1", "b": "b1"}
    # a2 took over: followed at once, and remembered.
    assert names(sticky_holders({"a": lease("a2"), "b": lease("b1")}, last))["a"] == "a2"
    assert names(sticky_holders({"a": lease(None)}, last))["a"] == "a2"


def test_a_pool_never_held_stays_without_holder() -> None:
    last: dict[str, str] = {}
    assert names(sticky_holders({"a": lease(None)}, last)) == {"a": ""}
    assert last == {}


def test_only_carrying_peers_are_probed_and_reported() -> None:
    live = PeerSpec("k1", ("10.0.0.0/24",))
    desired = DesiredState(Role.RELAY, peers=(live, PeerSpec("k2"), PeerSpec("k3")))
    assert carrying(desired).peers == (live,)
    assert carrying(desired).role == Role.RELAY
