"""Lists taken apart into items and put together again; pages assembled into one list."""

import json

from raven.cacheproxy.listdoc import Blob, ListDoc, join, split
from raven.cacheproxy.pages import MAX_AGE, MAX_ASSEMBLIES, Pages


def node(name: str, ns: str = "", rv: int = 1) -> dict:
    meta: dict = {"name": name, "resourceVersion": str(rv)}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "spec": {"x": "é ✓"}}


def test_a_list_splits_into_its_items_exactly_as_sent() -> None:
    items = [node("a", "ns1"), node("b", "ns2")]
    body = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": items})
    doc = split(body.encode())
    assert isinstance(doc, ListDoc) and not doc.table
    assert doc.shell == {"kind": "PodList", "metadata": {"resourceVersion": "9"}}
    assert doc.resource_version == "9" and doc.continue_token is None
    assert [(i.namespace, i.name) for i in doc.items] == [("ns1", "a"), ("ns2", "b")]
    assert [json.loads(bytes(i.body)) for i in doc.items] == items
    assert json.loads(join(doc.shell, "items", (i.body for i in doc.items))) == json.loads(body)


def test_items_first_or_with_whitespace_and_ascii_slices() -> None:
    body = b'{ "items" : [ {"metadata":{"name":"x"}} ,{"metadata":{"name":"y"}}],\n"kind":"L" }'
    doc = split(body)
    assert isinstance(doc, ListDoc) and [i.name for i in doc.items] == ["x", "y"]
    assert isinstance(doc.items[0].body, memoryview)  # a slice, no copy
    empty = split(b'{"kind":"L","metadata":{},"items":[]}')
    assert isinstance(empty, ListDoc) and empty.items == []


def test_a_table_splits_on_its_rows_and_anything_else_is_a_blob() -> None:
    table = {"kind": "Table", "metadata": {"resourceVersion": "4", "continue": "t"},
             "columnDefinitions": [], "rows": [{"cells": ["a"]}, {"cells": ["b"]}]}  # fmt: skip
    doc = split(json.dumps(table).encode())
    assert isinstance(doc, ListDoc) and doc.table and doc.continue_token == "t"
    assert split(json.dumps(node("n1", rv=7)).encode()) == Blob("7")
    for other in (b"[1,2]", b"not json", b'{"items": 5}', b'{"items":[{"no":"meta"}]}', b""):
        assert isinstance(split(other), Blob), other


def test_join_an_empty_shell() -> None:
    assert json.loads(join({}, "items", [b"1", b"2"])) == {"items": [1, 2]}


def page(names: list[str], token: str | None, rv: str = "5") -> ListDoc:
    meta: dict = {"resourceVersion": rv}
    if token:
        meta.update({"continue": token, "remainingItemCount": 3})
    doc = split(json.dumps({"kind": "L", "metadata": meta,
                            "items": [node(n) for n in names]}).encode())  # fmt: skip
    assert isinstance(doc, ListDoc)
    return doc


def test_pages_assemble_into_the_whole_list() -> None:
    pages = Pages()
    assert pages.add("k", None, page(["a", "b"], "t1"), "cred", 0.0) is None
    assert pages.add("k", "t1", page(["c"], "t2"), "cred", 1.0) is None
    whole = pages.add("k", "t2", page(["d"], None), "cred", 2.0)
    assert whole is not None and [i.name for i in whole.items] == ["a", "b", "c", "d"]
    assert whole.shell["metadata"] == {"resourceVersion": "5"}  # no continue, no count left
    assert len(pages) == 0


def test_an_unpaged_answer_is_whole_at_once() -> None:
    doc = page(["a"], None)
    assert Pages().add("k", None, doc, "cred", 0.0) is doc


def test_pages_of_unknown_or_foreign_assemblies_are_ignored() -> None:
    pages = Pages()
    pages.add("k", None, page(["a"], "t1"), "cred", 0.0)
    assert pages.add("k", "nope", page(["b"], None), "cred", 0.0) is None
    assert pages.add("k", "t1", page(["b"], None), "other-cred", 0.0) is None
    assert pages.add("other-key", "t1", page(["b"], None), "cred", 0.0) is None
    assert pages.add("k", "t1", page(["b"], None), "cred", 0.0) is not None


def test_assemblies_are_bounded_in_number_and_age() -> None:
    pages = Pages()
    for i in range(MAX_ASSEMBLIES + 5):
        pages.add(f"k{i}", None, page(["a"], f"t{i}"), "cred", float(i))
    assert len(pages) == MAX_ASSEMBLIES
    assert pages.add("k0", "t0", page(["b"], None), "cred", 30.0) is None  # the oldest went
    pages.add("late", None, page(["a"], "tl"), "cred", 100.0)
    assert pages.add("late", "tl", page(["b"], None), "cred", 100.0 + MAX_AGE + 1) is None
    assert len(pages) == 0
