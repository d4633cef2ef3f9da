"""The heartbeat's decisions, rule by rule: exact inputs, whole decisions compared."""

from __future__ import annotations

import pytest

from raven.cloudpath import DIRECT, NONE, VIA, CloudPath
from raven.heartbeat.decide import (
    DELEGATED,
    DELEGATION_LOST,
    DIRECT_AGAIN,
    NORMAL,
    WARNING,
    Decision,
    Event,
    Inputs,
    RelayAnswer,
    State,
    Verdict,
    debounce,
    decide,
    relays_to_ask,
)

NOW = 1000.0
A1 = RelayAnswer("edge-a-1", "http://10.0.0.1:10263", ready=True)
A1_GW = RelayAnswer("edge-a-1", "http://10.0.0.1:10263", ready=True, gateway=True)
A2 = RelayAnswer("edge-a-2", "http://10.0.0.2:10263", ready=True)
A3_GW = RelayAnswer("edge-a-3", "http://10.0.0.3:10263", ready=True, gateway=True)
A3_GW_GONE = RelayAnswer("edge-a-3", "http://10.0.0.3:10263", ready=False, gateway=True)
A2_GONE = RelayAnswer("edge-a-2", "http://10.0.0.2:10263", ready=False)


def via(relay: RelayAnswer, since: float = 1.0) -> CloudPath:
    return CloudPath(VIA, relay.node, relay.proxy, since)


DIRECT_STATE = State(CloudPath(DIRECT, since=1.0), "")


# -- debouncing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([], Verdict(None, 0)),
        ([False], Verdict(False, 0)),  # the first result decides alone
        ([True], Verdict(True, 0)),
        ([True, False, False], Verdict(True, 2)),
        ([True, False, False, False], Verdict(False, 0)),  # fail_after=3
        ([True, False, True, False, False], Verdict(True, 2)),  # a success resets the count
        ([False, True, True], Verdict(False, 2)),
        ([False, True, True, True], Verdict(True, 0)),  # recover_after=3
        ([False, True, False, True, True], Verdict(False, 2)),
    ],
)
def test_verdicts_flip_only_after_enough_results_in_a_row(
    results: list[bool], expected: Verdict
) -> None:
    verdict = Verdict()
    for ok in results:
        verdict = debounce(verdict, ok, fail_after=3, recover_after=3)
    assert verdict == expected


def test_one_failure_is_enough_with_fail_after_one() -> None:
    assert debounce(Verdict(True), False, fail_after=1, recover_after=3) == Verdict(False)


# -- the path --------------------------------------------------------------------------------

CASES = [
    (
        "direct up: stays direct, nothing to say",
        Inputs(direct=True, kubelet=True, relays=(), now=NOW),
        DIRECT_STATE,
        Decision(DIRECT_STATE),
    ),
    (
        "direct up with the kubelet dead: direct all the same (nothing to delegate)",
        Inputs(direct=True, kubelet=False, relays=(), now=NOW),
        DIRECT_STATE,
        Decision(DIRECT_STATE),
    ),
    (
        "nothing probed yet: the current path stays",
        Inputs(direct=None, kubelet=None, relays=(A1,), now=NOW),
        State(via(A1), "edge-a-1"),
        Decision(State(via(A1), "edge-a-1")),
    ),
    (
        "cut, kubelet healthy: delegated to the ready gateway, not the first by name",
        Inputs(direct=False, kubelet=True, relays=(A1, A2, A3_GW), now=NOW),
        DIRECT_STATE,
        Decision(
            State(via(A3_GW, NOW), "edge-a-3"),
            (
                Event(
                    NORMAL,
                    DELEGATED,
                    "Heartbeat delegated through edge-a-3 (the pool's gateway that reaches the "
                    "cloud): its own path to the API server is down",
                ),
            ),
        ),
    ),
    (
        "cut, no gateway ready: the first ready member by name",
        Inputs(direct=False, kubelet=True, relays=(A3_GW_GONE, A2, A1), now=NOW),
        DIRECT_STATE,
        Decision(
            State(via(A1, NOW), "edge-a-1"),
            (
                Event(
                    NORMAL,
                    DELEGATED,
                    "Heartbeat delegated through edge-a-1 (a pool member that reaches the "
                    "cloud): its own path to the API server is down",
                ),
            ),
        ),
    ),
    (
        "delegated: the current relay is kept while ready, even when another is gateway now",
        Inputs(direct=False, kubelet=True, relays=(A1_GW, A2), now=NOW),
        State(via(A2), "edge-a-2"),
        Decision(State(via(A2), "edge-a-2")),
    ),
    (
        "delegated and the relay stops answering ready: the next one, with an Event",
        Inputs(direct=False, kubelet=True, relays=(A2_GONE, A3_GW), now=NOW),
        State(via(A2), "edge-a-2"),
        Decision(
            State(via(A3_GW, NOW), "edge-a-3"),
            (
                Event(
                    NORMAL,
                    DELEGATED,
                    "Heartbeat delegation moved through edge-a-3 (the pool's gateway that "
                    "reaches the cloud): the relay of edge-a-2 no longer reaches the cloud or "
                    "stopped answering",
                ),
            ),
        ),
    ),
    (
        "delegated and the kubelet dies: none, the marks stay wanted (nothing can be written)",
        Inputs(direct=False, kubelet=False, relays=(A2,), now=NOW),
        State(via(A2), "edge-a-2"),
        Decision(
            State(CloudPath(NONE, since=NOW), "edge-a-2"),
            (
                Event(
                    WARNING,
                    DELEGATION_LOST,
                    "Heartbeat delegation through edge-a-2 ended: the kubelet is not healthy, "
                    "so the node must not be kept alive by delegation",
                ),
            ),
        ),
    ),
    (
        "cut with the kubelet dead: none, no delegation ever started",
        Inputs(direct=False, kubelet=False, relays=(A1_GW,), now=NOW),
        DIRECT_STATE,
        Decision(State(CloudPath(NONE, since=NOW), "")),
    ),
    (
        "cut while the kubelet's health is not known yet: the current path stays",
        Inputs(direct=False, kubelet=None, relays=(A1_GW,), now=NOW),
        DIRECT_STATE,
        Decision(DIRECT_STATE),
    ),
    (
        "delegated and no relay is ready any more (the whole pool cut): none",
        Inputs(direct=False, kubelet=True, relays=(A2_GONE, A3_GW_GONE), now=NOW),
        State(via(A2), "edge-a-2"),
        Decision(
            State(CloudPath(NONE, since=NOW), "edge-a-2"),
            (
                Event(
                    WARNING,
                    DELEGATION_LOST,
                    "Heartbeat delegation through edge-a-2 ended: no pool member's relay "
                    "reaches the cloud",
                ),
            ),
        ),
    ),
    (
        "cut with no member at all: none",
        Inputs(direct=False, kubelet=True, relays=(), now=NOW),
        DIRECT_STATE,
        Decision(State(CloudPath(NONE, since=NOW), "")),
    ),
    (
        "none, then a relay answers: delegated",
        Inputs(direct=False, kubelet=True, relays=(A2,), now=NOW),
        State(CloudPath(NONE, since=5.0), "edge-a-3"),
        Decision(
            State(via(A2, NOW), "edge-a-2"),
            (
                Event(
                    NORMAL,
                    DELEGATED,
                    "Heartbeat delegated through edge-a-2 (a pool member that reaches the "
                    "cloud): its own path to the API server is down",
                ),
            ),
        ),
    ),
    (
        "back to direct: the marks go away, one Event",
        Inputs(direct=True, kubelet=True, relays=(), now=NOW),
        State(via(A2), "edge-a-2"),
        Decision(
            State(CloudPath(DIRECT, since=NOW), ""),
            (
                Event(
                    NORMAL,
                    DIRECT_AGAIN,
                    "Heartbeat direct again: its own path to the API server is back "
                    "(was via edge-a-2)",
                ),
            ),
        ),
    ),
    (
        "none after a delegation, then direct: the marks go away, no Event (none was the end)",
        Inputs(direct=True, kubelet=True, relays=(), now=NOW),
        State(CloudPath(NONE, since=5.0), "edge-a-2"),
        Decision(State(CloudPath(DIRECT, since=NOW), "")),
    ),
    (
        "the same relay at a new address: followed without an Event",
        Inputs(
            direct=False,
            kubelet=True,
            relays=(RelayAnswer("edge-a-2", "http://10.0.9.2:10263", ready=True),),
            now=NOW,
        ),
        State(via(A2), "edge-a-2"),
        Decision(State(CloudPath(VIA, "edge-a-2", "http://10.0.9.2:10263", NOW), "edge-a-2")),
    ),
]


@pytest.mark.parametrize(
    ("inputs", "state", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(inputs: Inputs, state: State, expected: Decision) -> None:
    assert decide(inputs, state) == expected


def test_events_only_on_transitions_through_a_whole_cut() -> None:
    """Cut, delegated for a while, the relay moves, healed: three Events, no more."""
    state = DIRECT_STATE
    reasons = []
    timeline = [
        Inputs(True, True, (), NOW),
        Inputs(False, True, (A2, A3_GW), NOW),  # delegated via the gateway
        Inputs(False, True, (A3_GW,), NOW),
        Inputs(False, True, (A2, A3_GW), NOW),
        Inputs(False, True, (A2, A3_GW_GONE), NOW),  # the gateway's relay goes: moved
        Inputs(False, True, (A2,), NOW),
        Inputs(True, True, (), NOW),  # healed
        Inputs(True, True, (), NOW),
    ]
    for inputs in timeline:
        decision = decide(inputs, state)
        state = decision.state
        reasons += [e.reason for e in decision.events]
    assert reasons == [DELEGATED, DELEGATED, DIRECT_AGAIN]
    assert state.path.mode == DIRECT and state.marks == ""


def test_only_the_current_relay_is_asked_while_delegated() -> None:
    members = ("edge-a-1", "edge-a-2", "edge-a-3")
    assert relays_to_ask(via(A2), members) == ("edge-a-2",)
    assert relays_to_ask(CloudPath(DIRECT), members) == members
    assert relays_to_ask(CloudPath(NONE), members) == members
    # the relay left the pool: ask everyone
    assert relays_to_ask(via(A2), ("edge-a-1", "edge-a-3")) == ("edge-a-1", "edge-a-3")
