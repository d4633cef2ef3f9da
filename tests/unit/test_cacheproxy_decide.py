"""The pure decision core: exact inputs, exact actions."""

from raven.cacheproxy.decide import (
    Action,
    Failure,
    Outcome,
    Request,
    State,
    Verdict,
    after_failure,
    credential_verdict,
    decide,
    marks_cloud_down,
)

OK = frozenset({"h1"})


def s(healthy: bool, cached: bool = True, creds: frozenset[str] = OK, fresh: bool = True) -> State:
    return State(healthy, cached, creds, fresh)


def test_online_reads_forward_and_long_running_requests_stream() -> None:
    assert decide(Request("GET", False, "h1"), s(True)) is Action.FORWARD
    assert decide(Request("GET", True, "h1", True), s(True)) is Action.FORWARD_WATCH
    assert decide(Request("POST", False, None), s(True)) is Action.FORWARD
    logs = Request("GET", False, "h1", long_running=True)
    assert decide(logs, s(True)) is Action.FORWARD_STREAM
    assert decide(Request("POST", False, "h1", long_running=True), s(True)) is (
        Action.FORWARD_STREAM
    )


def test_offline_writes_refused_whatever_the_credential() -> None:
    for m in ("POST", "PUT", "PATCH", "DELETE"):
        assert decide(Request(m, False, "h1"), s(False)) is Action.REFUSE_WRITE


def test_offline_reads_need_an_accepted_credential_and_a_fresh_enough_entry() -> None:
    assert decide(Request("GET", False, "h1"), s(False)) is Action.SERVE_CACHE
    assert decide(Request("HEAD", False, "h1"), s(False)) is Action.SERVE_CACHE
    assert decide(Request("GET", False, "h1"), s(False, fresh=False)) is (Action.REFUSE_UNAVAILABLE)


def test_offline_an_unknown_credential_gets_the_same_answer_as_a_miss() -> None:
    miss = decide(Request("GET", False, "h1"), s(False, cached=False))
    assert miss is Action.REFUSE_UNAVAILABLE
    for cred in (None, "other"):
        for cached in (True, False):
            got = decide(Request("GET", False, cred), s(False, cached=cached))
            assert got is miss, (cred, cached)
            got = decide(Request("GET", True, cred, True), s(False, cached=cached))
            assert got is miss, (cred, cached)


def test_offline_watch_held_only_for_known_credentials() -> None:
    assert decide(Request("GET", True, "h1", True), s(False)) is Action.HOLD_WATCH
    assert decide(Request("GET", True, "h1", True), s(False, cached=False)) is (
        Action.REFUSE_UNAVAILABLE
    )


def test_offline_other_long_running_requests_are_unavailable() -> None:
    logs = Request("GET", False, "h1", long_running=True)
    assert decide(logs, s(False)) is Action.REFUSE_UNAVAILABLE


def test_only_a_connection_that_cannot_be_opened_marks_the_cloud_down() -> None:
    assert [marks_cloud_down(f) for f in Failure] == [True, False, False]


def test_after_a_failure_reads_and_writes_say_what_is_known() -> None:
    assert after_failure("GET", Failure.CONNECT) is Outcome.ANSWER_OFFLINE
    assert after_failure("GET", Failure.TIMEOUT) is Outcome.GATEWAY_TIMEOUT
    assert after_failure("GET", Failure.BROKEN) is Outcome.BAD_GATEWAY
    assert after_failure("PATCH", Failure.CONNECT) is Outcome.NOT_APPLIED
    assert after_failure("PATCH", Failure.TIMEOUT) is Outcome.OUTCOME_UNKNOWN
    assert after_failure("POST", Failure.BROKEN) is Outcome.OUTCOME_UNKNOWN


def test_what_an_answer_says_about_the_credential() -> None:
    assert credential_verdict("GET", 200) is Verdict.ACCEPTED
    assert credential_verdict("HEAD", 200) is Verdict.KEEP  # no body to cache
    assert credential_verdict("GET", 401) is Verdict.REFUSED
    assert credential_verdict("PATCH", 401) is Verdict.REFUSED  # refused is refused
    assert credential_verdict("GET", 403) is Verdict.FORBIDDEN
    assert credential_verdict("PATCH", 403) is Verdict.KEEP  # may still read
    assert credential_verdict("GET", 404) is Verdict.KEEP
    assert credential_verdict("GET", 500) is Verdict.KEEP
