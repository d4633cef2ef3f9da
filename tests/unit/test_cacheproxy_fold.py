"""How watch events change the list they continue: exact inputs, exact operations."""

from raven.cacheproxy.fold import Event, Follower, ListState, Op, begin, parse_event, step


def ev(kind: str, rv: int | None, name: str = "n1") -> Event:
    return Event(kind, rv, "", name, {"metadata": {"name": name}})


def run(entry: ListState, start: str, events: list[Event]) -> list[Op]:
    """Fold ``events`` into a list that moves as each applied event moves it."""
    follower = begin(entry, start)
    ops = []
    for e in events:
        op, follower = step(follower, entry, e)
        ops.append(op)
        if op in (Op.UPSERT, Op.DELETE, Op.ADVANCE):
            entry = ListState(e.rv, entry.generation)
    return ops


def test_a_watch_from_the_lists_version_folds_every_event() -> None:
    ops = run(ListState(10, 1), "10", [ev("ADDED", 11), ev("MODIFIED", 12), ev("DELETED", 13)])
    assert ops == [Op.UPSERT, Op.UPSERT, Op.DELETE]


def test_events_the_list_already_holds_are_skipped() -> None:
    ops = run(ListState(10, 1), "5", [ev("MODIFIED", 7), ev("DELETED", 10), ev("ADDED", 11)])
    assert ops == [Op.SKIP, Op.SKIP, Op.UPSERT]


def test_bookmarks_move_the_version_only() -> None:
    assert run(ListState(10, 1), "10", [ev("BOOKMARK", 20), ev("BOOKMARK", 15)]) == [
        Op.ADVANCE, Op.SKIP
    ]  # fmt: skip


def test_watches_that_are_not_a_continuation_do_not_fold() -> None:
    for start in ("11", "", "0", "abc"):  # newer than the list, or from "now"
        assert run(ListState(10, 1), start, [ev("ADDED", 12)]) == [Op.NONE], start
    assert begin(None, "10") == Follower(None, None)  # no list cached
    assert begin(ListState(None, 1), "10") == Follower(None, None)


def test_an_event_the_fold_cannot_place_stops_it() -> None:
    assert run(ListState(10, 1), "10", [ev("ERROR", 11), ev("ADDED", 12)]) == [Op.STOP, Op.NONE]
    assert run(ListState(10, 1), "10", [ev("ADDED", None), ev("ADDED", 12)]) == [
        Op.STOP, Op.NONE
    ]  # fmt: skip


def test_two_watches_of_one_list_fold_together() -> None:
    entry = ListState(10, 1)
    a, b = begin(entry, "10"), begin(entry, "8")
    op, a = step(a, entry, ev("MODIFIED", 11))
    assert op is Op.UPSERT
    entry = ListState(11, 1)
    op, b = step(b, entry, ev("MODIFIED", 9))
    assert op is Op.SKIP
    op, b = step(b, entry, ev("MODIFIED", 11))
    assert op is Op.SKIP  # a already applied it
    op, b = step(b, entry, ev("DELETED", 12))
    assert op is Op.DELETE
    entry = ListState(12, 1)
    op, a = step(a, entry, ev("DELETED", 12))
    assert op is Op.SKIP


def test_a_new_list_keeps_a_watch_only_if_it_has_not_passed_it() -> None:
    follower = begin(ListState(10, 1), "10")
    op, follower = step(follower, ListState(10, 1), ev("MODIFIED", 12))
    assert op is Op.UPSERT
    # A re-list at 15 replaced the entry: the watch (at 12) goes on into the new one.
    op, follower = step(follower, ListState(15, 2), ev("MODIFIED", 14))
    assert (op, follower.generation) == (Op.SKIP, 2)
    op, _ = step(follower, ListState(15, 2), ev("MODIFIED", 16))
    assert op is Op.UPSERT
    # A re-list older than where the watch is: events between would be missing.
    late = begin(ListState(20, 3), "20")
    _, late = step(late, ListState(20, 3), ev("MODIFIED", 25))
    assert step(late, ListState(22, 4), ev("MODIFIED", 26))[0] is Op.STOP


def test_the_list_gone_stops_the_fold() -> None:
    follower = begin(ListState(10, 1), "10")
    assert step(follower, None, ev("ADDED", 11))[0] is Op.STOP


def test_parse_event_lines() -> None:
    meta = b'{"namespace":"a","name":"b","resourceVersion":"9"}'
    line = b'{"type":"MODIFIED","object":{"metadata":' + meta + b"}}"
    got = parse_event(line)
    assert got is not None and (got.type, got.rv, got.namespace, got.name) == (
        "MODIFIED",
        9,
        "a",
        "b",
    )
    assert parse_event(b"not json") is None
    assert parse_event(b'{"type":"ADDED"}') is None
    bad = parse_event(b'{"type":"ADDED","object":{"metadata":{"resourceVersion":"x"}}}')
    assert bad is not None and bad.rv is None
