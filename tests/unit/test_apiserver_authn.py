"""Service-account tokens: signed by the server's own key, bound to the account, expiring."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from raven.lab.apiserver.authn import ISSUER, TokenIssuer, service_account_of


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def issuer(tmp_path, clock):
    return TokenIssuer(tmp_path / "sa.key", clock=clock)


def claims_of(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_a_token_carries_kube_apiservers_claims(issuer, clock):
    token, expires = issuer.mint("raven-system", "raven-agent", "uid-1", expiration_seconds=600)
    claims = claims_of(token)
    assert claims["sub"] == "system:serviceaccount:raven-system:raven-agent"
    assert claims["iss"] == ISSUER and claims["aud"] == [ISSUER]
    assert claims["kubernetes.io"] == {
        "namespace": "raven-system",
        "serviceaccount": {"name": "raven-agent", "uid": "uid-1"},
    }
    assert claims["exp"] == expires == int(clock.now) + 600
    got = issuer.verify(token)
    assert got is not None and (got.namespace, got.name, got.uid) == (
        "raven-system",
        "raven-agent",
        "uid-1",
    )


def test_tokens_expire(issuer, clock):
    token, _ = issuer.mint("ns", "sa", "u", expiration_seconds=600)
    clock.now += 599
    assert issuer.verify(token) is not None
    clock.now += 1
    assert issuer.verify(token) is None


def test_a_token_for_another_audience_is_not_for_this_server(issuer):
    token, _ = issuer.mint("ns", "sa", "u", audiences=["vault"])
    assert issuer.verify(token) is None


def test_an_altered_or_foreign_token_is_refused(issuer, tmp_path, clock):
    token, _ = issuer.mint("ns", "sa", "u")
    head, body, sig = token.split(".")
    claims = claims_of(token)
    claims["sub"] = "system:serviceaccount:kube-system:admin"
    claims["kubernetes.io"]["namespace"] = "kube-system"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert issuer.verify(f"{head}.{forged_body}.{sig}") is None
    other, _ = TokenIssuer(tmp_path / "other.key", clock=clock).mint("ns", "sa", "u")
    assert issuer.verify(other) is None
    for junk in ("", "a.b", "a.b.c", token + "x", "x" * 5000):
        assert issuer.verify(junk) is None


def test_the_signing_key_is_private_and_survives_a_restart(tmp_path, clock):
    first = TokenIssuer(tmp_path / "sa.key", clock=clock)
    token, _ = first.mint("ns", "sa", "u")
    assert stat.S_IMODE((tmp_path / "sa.key").stat().st_mode) == 0o600
    assert TokenIssuer(tmp_path / "sa.key", clock=clock).verify(token) is not None


def test_two_tokens_for_one_account_differ(issuer):
    assert issuer.mint("ns", "sa", "u")[0] != issuer.mint("ns", "sa", "u")[0]


@pytest.mark.parametrize(
    ("user", "account"),
    [
        ("system:serviceaccount:ns:sa", ("ns", "sa")),
        ("system:serviceaccount:ns", None),
        ("system:serviceaccount:ns:sa:x", None),
        ("alice", None),
    ],
)
def test_service_account_usernames(user, account):
    assert service_account_of(user) == account
