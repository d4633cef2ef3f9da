"""The heartbeat's pure core: from what the probes and the pool's relays say, the node's cloud
path, the Lease marks it wants and the Events that tell people about it.

No I/O here, so every rule is tested with exact inputs; :mod:`raven.heartbeat.runtime` only
executes what comes out.

- Probe verdicts are debounced (:func:`debounce`): ``fail_after`` consecutive failures mark a
  path down, ``recover_after`` consecutive successes mark it up again. Before the first probe the
  verdict is unknown (None) and the first result decides at once, so a heartbeat restarted on a
  node that is cut moves away at once instead of after ``fail_after`` intervals.
- Path rules (:func:`decide`): the node's own path up → DIRECT. Own path down and the kubelet
  healthy → VIA a pool member whose relay says it reaches the cloud: the current relay while it
  answers ready (no flapping), otherwise the one that says it is the pool's gateway, otherwise
  the first ready member by name. Own path down and the kubelet unhealthy → NONE: a node whose
  kubelet is dead is never kept alive by delegation. No ready relay → NONE. While a verdict is
  still unknown, the current path stays.
- Marks on the node's Lease follow the path: a relay's name while VIA, none while DIRECT. While
  NONE nothing can reach the API server, so the wanted marks stay as they were until a path
  returns.
- Events exactly when delegation starts, moves to another relay, or ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from raven.cloudpath import DIRECT, NONE, VIA, CloudPath

NORMAL, WARNING = "Normal", "Warning"
DELEGATED = "HeartbeatDelegated"  # delegation started, or moved to another relay
DIRECT_AGAIN = "HeartbeatDirect"  # the node's own path is back: delegation ended
DELEGATION_LOST = "HeartbeatDelegationEnded"  # delegation ended without a path to the cloud


@dataclass(frozen=True)
class Verdict:
    """A debounced probe verdict: ``up`` (None before the first probe) and how many results in
    a row contradicted it so far."""

    up: bool | None = None
    against: int = 0


def debounce(verdict: Verdict, ok: bool, *, fail_after: int, recover_after: int) -> Verdict:
    """Fold one probe result into ``verdict``: it flips after ``fail_after`` failures (when up)
    or ``recover_after`` successes (when down) in a row; the first result ever decides alone."""
    if verdict.up is None:
        return Verdict(ok, 0)
    if ok == verdict.up:
        return Verdict(ok, 0)
    against = verdict.against + 1
    if against >= (fail_after if verdict.up else recover_after):
        return Verdict(ok, 0)
    return Verdict(verdict.up, against)


@dataclass(frozen=True)
class RelayAnswer:
    """What one pool member's relay said this interval (``ready``: it answered and reaches the
    cloud). A member that did not answer is ``ready=False``."""

    node: str
    proxy: str  # http://IP:PORT
    ready: bool
    gateway: bool = False


@dataclass(frozen=True)
class Inputs:
    direct: bool | None  # the debounced own-path verdict
    kubelet: bool | None  # the debounced kubelet verdict
    relays: tuple[RelayAnswer, ...]  # the answers of this interval (none asked: empty)
    now: float  # Unix time, for CloudPath.since
    why_direct_down: str = "its own path to the API server is down"


@dataclass(frozen=True)
class State:
    """What the heartbeat remembers between decisions."""

    path: CloudPath = CloudPath()
    marks: str = ""  # the relay node the Lease should name; "" = no delegation marks


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: State  # the path to follow and the marks wanted; the next decision's input
    events: tuple[Event, ...] = ()


def choose_relay(current: CloudPath, relays: tuple[RelayAnswer, ...]) -> RelayAnswer | None:
    """The relay to use: the current one while it answers ready, else the ready gateway, else
    the first ready member by name; None when none is ready."""
    ready = sorted((r for r in relays if r.ready), key=lambda r: r.node)
    if current.mode == VIA:
        for relay in ready:
            if relay.node == current.via:
                return relay
    gateways = [r for r in ready if r.gateway]
    if gateways:
        return gateways[0]
    return ready[0] if ready else None


def _why_none(inputs: Inputs) -> str:
    if inputs.kubelet is False:
        return "the kubelet is not healthy, so the node must not be kept alive by delegation"
    return "no pool member's relay reaches the cloud"


def decide(inputs: Inputs, state: State) -> Decision:
    """The path, the marks and the Events after this interval's probes."""
    current = state.path
    if inputs.direct is None or (inputs.direct is False and inputs.kubelet is None):
        return Decision(state)
    relay: RelayAnswer | None = None
    if inputs.direct:
        want = CloudPath(DIRECT)
    elif not inputs.kubelet:
        want = CloudPath(NONE)
    else:
        relay = choose_relay(current, inputs.relays)
        want = CloudPath(VIA, relay.node, relay.proxy) if relay else CloudPath(NONE)
    if want.same_route(current):
        return Decision(state)
    path = replace(want, since=inputs.now)
    marks = {DIRECT: "", VIA: path.via, NONE: state.marks}[path.mode]
    return Decision(State(path, marks), _events(current, path, relay, inputs))


def _events(
    old: CloudPath, new: CloudPath, relay: RelayAnswer | None, inputs: Inputs
) -> tuple[Event, ...]:
    if new.mode == VIA:
        role = "the pool's gateway" if relay is not None and relay.gateway else "a pool member"
        through = f"through {new.via} ({role} that reaches the cloud)"
        if old.mode == VIA and old.via == new.via:
            return ()  # the same relay at a new address: nothing anyone needs to hear about
        if old.mode == VIA:
            why = f"the relay of {old.via} no longer reaches the cloud or stopped answering"
            message = f"Heartbeat delegation moved {through}: {why}"
        else:
            message = f"Heartbeat delegated {through}: {inputs.why_direct_down}"
        return (Event(NORMAL, DELEGATED, message),)
    if old.mode != VIA:
        return ()
    if new.mode == DIRECT:
        message = (
            f"Heartbeat direct again: its own path to the API server is back (was via {old.via})"
        )
        return (Event(NORMAL, DIRECT_AGAIN, message),)
    message = f"Heartbeat delegation through {old.via} ended: {_why_none(inputs)}"
    return (Event(WARNING, DELEGATION_LOST, message),)


def relays_to_ask(path: CloudPath, members: tuple[str, ...]) -> tuple[str, ...]:
    """Which members' relays to ask first this interval while the own path is down: only the
    current relay while delegated through one that is still a member (keeping it needs nothing
    more), else every member. Ask the rest when the current one is not ready."""
    if path.mode == VIA and path.via in members:
        return (path.via,)
    return members
