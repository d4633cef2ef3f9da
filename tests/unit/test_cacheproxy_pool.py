"""Pool-level reuse, decided: a member reads its pool gateway's feed, everyone else the cloud;
the feed serves only the other nodes of its pool, and only while it is the gateway in sync."""

from __future__ import annotations

import pytest

from raven.cacheproxy.identity import Subject
from raven.cacheproxy.pool import (
    CLOUD,
    PoolView,
    RoleError,
    Source,
    admit,
    parse_role,
    ready,
    source,
)

MEMBERS = frozenset({"a-1", "a-2", "a-3"})
MEMBER = PoolView("a-2", "edge-a", "a-1", "192.168.10.11", MEMBERS)
GATEWAY = PoolView("a-1", "edge-a", "a-1", "192.168.10.11", MEMBERS)


def node(name: str) -> Subject:
    return Subject(f"system:node:{name}", frozenset({"system:nodes"}))


def test_the_agents_role_is_read_as_it_says_it():
    doc = {
        "node": "a-2",
        "pool": "edge-a",
        "gateway": False,
        "holder": "a-1",
        "holderAddress": "192.168.10.11",
        "members": ["a-1", "a-2", "a-3"],
    }
    assert parse_role(doc, "a-2") == MEMBER
    # An agent before pool-level reuse: no holder, no members.
    assert parse_role({"node": "a-2", "pool": "edge-a", "gateway": False}, "a-2") == PoolView(
        "a-2", "edge-a"
    )


@pytest.mark.parametrize(
    "doc, words",
    [
        ([], "not a JSON object"),
        ({"node": "a-3"}, "speaks of node 'a-3'"),
        ({"node": "a-2", "holder": 7}, "holder must be"),
        ({"node": "a-2", "members": "a-1"}, "members must be"),
        ({"node": "a-2", "holder": "a-1", "holderAddress": "gw.local"}, "not an IP address"),
    ],
)
def test_an_unusable_role_names_what_is_wrong(doc, words):
    with pytest.raises(RoleError, match=words):
        parse_role(doc, "a-2")


@pytest.mark.parametrize(
    "view, failed, expected",
    [
        (MEMBER, False, Source("https://192.168.10.11:10266", "a-1")),
        (MEMBER, True, CLOUD),  # its feed was not ready or failed: the cloud for now
        (GATEWAY, False, CLOUD),  # the gateway reads the API server itself
        (PoolView("a-2", "edge-a", None, None, MEMBERS), False, CLOUD),  # no gateway
        (PoolView("a-2", "edge-a", "a-1", None, MEMBERS), False, CLOUD),  # no address
        (PoolView("a-2", "edge-a", "a-1", "fd00::1", MEMBERS), False,
         Source("https://[fd00::1]:10266", "a-1")),
        (PoolView("x-9", "edge-a", "a-1", "192.168.10.11", MEMBERS), False, CLOUD),  # not in it
        (None, False, CLOUD),  # the agent never answered
    ],
)  # fmt: skip
def test_source(view, failed, expected):
    assert source(view, port=10266, feed_failed=failed) == expected


@pytest.mark.parametrize(
    "subject, view, ok, words",
    [
        (node("a-2"), GATEWAY, True, ""),
        (node("a-3"), GATEWAY, True, ""),
        (node("b-1"), GATEWAY, False, "not a member of pool edge-a"),
        (node("a-1"), GATEWAY, False, "is this node"),
        (Subject("system:node:a-2"), GATEWAY, False, "only node identities"),  # no O
        (Subject("admin", frozenset({"system:masters"})), GATEWAY, False, "only node identities"),
        (Subject("system:node:", frozenset({"system:nodes"})), GATEWAY, False, "only node"),
        (None, GATEWAY, False, "without a certificate"),
        (node("a-2"), None, False, "does not know its pool"),
        (node("a-2"), PoolView("a-1"), False, "does not know its pool"),
    ],
)
def test_the_feed_serves_only_the_other_nodes_of_its_pool(subject, view, ok, words):
    admitted, why = admit(subject, view)
    assert admitted is ok and words in why


@pytest.mark.parametrize(
    "view, synced, fed, ok, words",
    [
        (GATEWAY, {"services": True, "endpointslices": True}, False, True, "in sync"),
        (GATEWAY, {"services": True, "endpointslices": False}, False, False, "endpointslices"),
        (GATEWAY, {"services": True}, True, False, "another feed"),
        (MEMBER, {"services": True}, False, False, "the gateway is a-1"),
        (None, {"services": True}, False, False, "the gateway is unknown"),
    ],
)
def test_the_feed_is_ready_only_as_the_gateway_in_sync_with_the_cloud(view, synced, fed, ok, words):
    got, why = ready(view, synced, fed)
    assert got is ok and words in why
