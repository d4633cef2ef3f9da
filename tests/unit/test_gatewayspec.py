"""Gateway spec parsing: defaults, each refusal with its exact field path and message, selectors."""

from __future__ import annotations

from typing import Any

import pytest

from raven.gatewayspec import (
    GatewaySpec,
    GatewaySpecError,
    LabelSelector,
    parse_gateway_spec,
    selector_matches,
)


def test_empty_or_missing_spec_gives_defaults() -> None:
    for raw in (None, {}):
        spec = parse_gateway_spec(raw)
        assert (spec.relay, spec.endpoint, spec.tunnel_port, spec.keepalive_seconds) == (
            False, None, 51820, 5,
        )  # fmt: skip
        assert spec.candidate_selector is None


def test_full_spec_is_read_with_kubernetes_field_names() -> None:
    spec = parse_gateway_spec(
        {
            "relay": True,
            "endpoint": "relay.example.net:4500",
            "tunnelPort": 4500,
            "keepaliveSeconds": 0,
            "candidateSelector": {
                "matchLabels": {"raven.io/gateway": "yes"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
            },
        }
    )
    assert spec == GatewaySpec(
        relay=True,
        endpoint="relay.example.net:4500",
        tunnelPort=4500,
        keepaliveSeconds=0,
        candidateSelector=LabelSelector(
            matchLabels={"raven.io/gateway": "yes"},
            matchExpressions=[{"key": "zone", "operator": "In", "values": ("a", "b")}],
        ),
    )


@pytest.mark.parametrize("endpoint", ["198.18.0.1:51820", "[2001:db8::1]:1", "a-b.example:65535"])
def test_valid_endpoints(endpoint: str) -> None:
    assert parse_gateway_spec({"endpoint": endpoint}).endpoint == endpoint


def test_an_ipv6_endpoint_is_kept_in_the_form_wg_prints() -> None:
    # wg show prints the canonical form; any other spelling would be re-sent on every reconcile.
    assert parse_gateway_spec({"endpoint": "[2001:0DB8:0::1]:9"}).endpoint == "[2001:db8::1]:9"


SEL = "spec.candidateSelector"
ERRORS: dict[str, tuple[Any, str, str]] = {
    "port too high": (
        {"tunnelPort": 70000},
        "spec.tunnelPort",
        "spec.tunnelPort must be less than or equal to 65535, got 70000",
    ),
    "port zero": (
        {"tunnelPort": 0},
        "spec.tunnelPort",
        "spec.tunnelPort must be greater than or equal to 1, got 0",
    ),
    "port as string": (
        {"tunnelPort": "51820"},
        "spec.tunnelPort",
        "spec.tunnelPort must be a valid integer, got '51820'",
    ),
    "keepalive negative": (
        {"keepaliveSeconds": -1},
        "spec.keepaliveSeconds",
        "spec.keepaliveSeconds must be greater than or equal to 0, got -1",
    ),
    "relay as string": (
        {"relay": "yes"},
        "spec.relay",
        "spec.relay must be a valid boolean, got 'yes'",
    ),
    "unknown field": (
        {"tunelPort": 1},
        "spec.tunelPort",
        "spec.tunelPort is not a known field (known: candidateSelector, endpoint,"
        " keepaliveSeconds, relay, tunnelPort)",
    ),
    "endpoint without port": (
        {"endpoint": "198.18.0.1"},
        "spec.endpoint",
        "spec.endpoint: must be host:port, got '198.18.0.1'",
    ),
    "endpoint port zero": (
        {"endpoint": "relay.example:0"},
        "spec.endpoint",
        "spec.endpoint: port must be a number from 1 to 65535 (ASCII digits, no leading zero),"
        " got 'relay.example:0'",
    ),
    "endpoint port with a leading zero": (
        {"endpoint": "198.18.0.1:051820"},
        "spec.endpoint",
        "spec.endpoint: port must be a number from 1 to 65535 (ASCII digits, no leading zero),"
        " got '198.18.0.1:051820'",
    ),
    "endpoint port in non-ASCII digits": (
        {"endpoint": "relay.example:\uff15\uff11\uff18\uff12\uff10"},
        "spec.endpoint",
        "spec.endpoint: port must be a number from 1 to 65535 (ASCII digits, no leading zero),"
        " got 'relay.example:\uff15\uff11\uff18\uff12\uff10'",
    ),
    "endpoint port too high": (
        {"endpoint": "relay.example:65536"},
        "spec.endpoint",
        "spec.endpoint: port must be a number from 1 to 65535 (ASCII digits, no leading zero),"
        " got 'relay.example:65536'",
    ),
    "endpoint host with a newline": (
        {"endpoint": "relay.example\n:51820"},
        "spec.endpoint",
        "spec.endpoint: relay.example\n is not a valid DNS name, got 'relay.example\\n:51820'",
    ),
    "endpoint host a resolver would read as a number": (
        {"endpoint": "0x7f000001:51820"},
        "spec.endpoint",
        "spec.endpoint: 0x7f000001 is not a valid DNS name, got '0x7f000001:51820'",
    ),
    "endpoint loopback": (
        {"endpoint": "127.0.0.1:51820"},
        "spec.endpoint",
        "spec.endpoint: 127.0.0.1 is a loopback address, which no peer can have,"
        " got '127.0.0.1:51820'",
    ),
    "endpoint with a zone": (
        {"endpoint": "[fe80::1%eth0]:51820"},
        "spec.endpoint",
        "spec.endpoint: fe80::1%eth0 is not a valid IPv6 address, got '[fe80::1%eth0]:51820'",
    ),
    "endpoint not a string": (
        {"endpoint": 51820},
        "spec.endpoint",
        "spec.endpoint must be a valid string, got 51820",
    ),
    "port as a float": (
        {"tunnelPort": 51820.0},
        "spec.tunnelPort",
        "spec.tunnelPort must be a valid integer, got 51820.0",
    ),
    "port as a boolean": (
        {"tunnelPort": True},
        "spec.tunnelPort",
        "spec.tunnelPort must be a valid integer, got True",
    ),
    "endpoint bare ipv6": (
        {"endpoint": "2001:db8::1:51820"},
        "spec.endpoint",
        "spec.endpoint: an IPv6 address must be in brackets ([addr]:port), got '2001:db8::1:51820'",
    ),
    "endpoint bad ipv4": (
        {"endpoint": "300.1.1.1:5"},
        "spec.endpoint",
        "spec.endpoint: 300.1.1.1 is not a valid IPv4 address, got '300.1.1.1:5'",
    ),
    "endpoint bad dns": (
        {"endpoint": "bad_host:5"},
        "spec.endpoint",
        "spec.endpoint: bad_host is not a valid DNS name, got 'bad_host:5'",
    ),
    "selector bad operator": (
        {"candidateSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}},
        f"{SEL}.matchExpressions[0].operator",
        f"{SEL}.matchExpressions[0].operator must be 'In', 'NotIn', 'Exists' or"
        " 'DoesNotExist', got 'Bogus'",
    ),
    "selector In without values": (
        {"candidateSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        f"{SEL}.matchExpressions[0]",
        f"{SEL}.matchExpressions[0]: operator In needs at least one value in values",
    ),
    "selector Exists with values": (
        {
            "candidateSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        f"{SEL}.matchExpressions[0]",
        f"{SEL}.matchExpressions[0]: operator Exists takes no values, got ['x']",
    ),
    "selector missing key": (
        {"candidateSelector": {"matchExpressions": [{"operator": "Exists"}]}},
        f"{SEL}.matchExpressions[0].key",
        f"{SEL}.matchExpressions[0].key is required",
    ),
    "selector expressions not a list": (
        {"candidateSelector": {"matchExpressions": "zone"}},
        f"{SEL}.matchExpressions",
        f"{SEL}.matchExpressions must be a list, got 'zone'",
    ),
    "selector bad label key": (
        {"candidateSelector": {"matchLabels": {"a b": "x"}}},
        f"{SEL}.matchLabels",
        f"{SEL}.matchLabels: 'a b' is not a valid label key",
    ),
    "selector unknown field": (
        {"candidateSelector": {"labels": {}}},
        f"{SEL}.labels",
        f"{SEL}.labels is not a known field (known: matchExpressions, matchLabels)",
    ),
    "spec not an object": ([1], "spec", "spec must be an object, got [1]"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_refused_spec_names_field_and_value(case: str) -> None:
    raw, field, message = ERRORS[case]
    with pytest.raises(GatewaySpecError) as caught:
        parse_gateway_spec(raw)
    assert (caught.value.field, str(caught.value)) == (field, message)


def test_every_bad_field_is_reported() -> None:
    with pytest.raises(GatewaySpecError) as caught:
        parse_gateway_spec({"tunnelPort": 0, "keepaliveSeconds": 70000})
    assert [f for f, _ in caught.value.errors] == ["spec.tunnelPort", "spec.keepaliveSeconds"]
    assert caught.value.field == "spec.tunnelPort"
    assert "; " in str(caught.value)


LABELS = {"zone": "a", "tier": "edge", "raven.io/gateway": "yes"}
SELECTORS: list[tuple[dict[str, Any], bool]] = [
    ({}, True),
    ({"matchLabels": {"zone": "a"}}, True),
    ({"matchLabels": {"zone": "b"}}, False),
    ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
    ({"matchExpressions": [{"key": "rack", "operator": "In", "values": ["1"]}]}, False),
    ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
    ({"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["1"]}]}, True),
    ({"matchExpressions": [{"key": "raven.io/gateway", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "rack", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "rack", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    (
        {
            "matchLabels": {"tier": "edge"},
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}],
        },
        False,
    ),
]


@pytest.mark.parametrize("raw,expected", SELECTORS)
def test_selector_matches(raw: dict[str, Any], expected: bool) -> None:
    spec = parse_gateway_spec({"candidateSelector": raw})
    assert selector_matches(spec.candidate_selector, LABELS) is expected


def test_no_selector_matches_every_node() -> None:
    assert selector_matches(None, {}) is True
