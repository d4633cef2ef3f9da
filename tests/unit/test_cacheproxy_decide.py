"""The pure decision core: exact inputs, exact actions."""

from raven.cacheproxy.decide import Action, Request, State, decide

OK = frozenset({"h1"})


def s(healthy: bool, cached: bool = True, creds: frozenset[str] = OK) -> State:
    return State(healthy, cached, creds)


def test_online_reads_forward_and_watches_stream() -> None:
    assert decide(Request("GET", False, "h1"), s(True)) is Action.FORWARD
    assert decide(Request("GET", True, "h1"), s(True)) is Action.FORWARD_WATCH
    assert decide(Request("POST", False, None), s(True)) is Action.FORWARD


def test_offline_writes_refused_whatever_the_credential() -> None:
    for m in ("POST", "PUT", "PATCH", "DELETE"):
        assert decide(Request(m, False, "h1"), s(False)) is Action.REFUSE_WRITE


def test_offline_reads_need_an_accepted_credential() -> None:
    assert decide(Request("GET", False, "h1"), s(False)) is Action.SERVE_CACHE
    assert decide(Request("GET", False, None), s(False)) is Action.REFUSE_AUTH
    assert decide(Request("GET", False, "other"), s(False)) is Action.REFUSE_AUTH
    assert decide(Request("GET", False, "h1"), s(False, cached=False)) is Action.REFUSE_MISS


def test_offline_watch_held_only_for_known_credentials() -> None:
    assert decide(Request("GET", True, "h1"), s(False)) is Action.HOLD_WATCH
    assert decide(Request("GET", True, "x"), s(False)) is Action.REFUSE_AUTH
    assert decide(Request("GET", True, None), s(False)) is Action.REFUSE_AUTH
    assert decide(Request("GET", True, "h1"), s(False, cached=False)) is Action.REFUSE_MISS
