"""Which clients the proxy speaks for with the node's certificate, and under which credential
their reads are cached (the pure part; the wire is in test_cacheproxy_nodeidentity.py)."""

import pytest

from raven.cacheproxy.identity import (
    Presented,
    Subject,
    certificate_credential,
    judge,
    peer_subject,
)
from raven.cacheproxy.request import credential

NODE = Subject("system:node:edge-a-1", frozenset({"system:nodes"}))


def peercert(*rdns: tuple[str, str]) -> dict:
    return {"subject": tuple(((k, v),) for k, v in rdns), "issuer": ()}


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (None, Presented.OWN),  # no certificate: the client's own Authorization, as before
        (NODE, Presented.NODE),
        (Subject("system:node:edge-a-2", frozenset({"system:nodes"})), Presented.REFUSED),
        # The same name in other groups is another identity to the API server.
        (Subject("system:node:edge-a-1", frozenset()), Presented.REFUSED),
        (Subject("system:node:edge-a-1", frozenset({"system:nodes", "x"})), Presented.REFUSED),
        (Subject("admin", frozenset({"system:masters"})), Presented.REFUSED),
    ],
)
def test_only_the_nodes_own_subject_is_presented_as_the_node(
    peer: Subject | None, expected: Presented
) -> None:
    assert judge(peer, NODE) is expected


def test_a_proxy_without_a_node_certificate_speaks_for_no_certificate() -> None:
    assert judge(None, None) is Presented.OWN
    assert judge(NODE, None) is Presented.REFUSED


def test_peer_subject_reads_cn_and_every_o() -> None:
    cert = peercert(
        ("organizationName", "system:nodes"),
        ("organizationName", "extra"),
        ("commonName", "system:node:edge-a-1"),
    )
    assert peer_subject(cert) == Subject(
        "system:node:edge-a-1", frozenset({"system:nodes", "extra"})
    )
    assert peer_subject(None) is None
    assert peer_subject({}) is None  # what getpeercert() gives when the client showed none
    assert peer_subject(peercert(("organizationName", "system:nodes"))) is None


def test_a_certificate_credential_never_equals_a_bearer_credential() -> None:
    cred = certificate_credential(NODE)
    assert cred == "x509:CN=system:node:edge-a-1,O=system:nodes"
    # Even a client that sends the certificate credential's text as a token gets a digest.
    assert credential(f"Bearer {cred}") != cred
    assert len(credential("Bearer t") or "") == 64 and ":" not in (credential("Bearer t") or "")
