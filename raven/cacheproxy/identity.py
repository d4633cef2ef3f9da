"""Who a client is when it shows a client certificate, and what the proxy does about it. Pure.

The proxy terminates TLS, so a client certificate cannot pass through it the way a bearer token
does. Like YurtHub for kubelet, it verifies the client's certificate against the client CA and,
when the certificate names this node (the same subject as the node's own client certificate,
``CN=system:node:<name>``, ``O=system:nodes``), presents the node's certificate upstream on the
client's behalf. Every other verified subject is refused (403): the proxy holds only its node's
key and speaks for nobody else. A client without a certificate is judged by the API server on its
own Authorization header, as before.

A certificate client's requests go up with the headers it sent: the proxy adds no Authorization
of its own and removes none. If such a client sent a bearer token too, kube-apiserver's union
authenticator tries the x509 authenticator before tokens, so the node identity is what it
authenticates, and what the cache records.

The credential under which a certificate client's reads are cached is
:func:`certificate_credential`: ``x509:`` and the subject, not the certificate's fingerprint. The
API server takes a client certificate's user and groups from exactly that subject (CN and O) and
authorizes nothing else of it, so the subject is what it accepted for the data; and kubelet
rotates its certificate (a new key and fingerprint, the same subject) well before it expires, so a
fingerprint would orphan the node's cached reads at every rotation, possibly just before an
outage. A bearer credential is a bare SHA-256 hex digest (raven/cacheproxy/request.py), so the two
can never be taken for one another.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Subject:
    """The parts of a certificate's subject the API server reads: user (CN) and groups (O)."""

    common_name: str
    organizations: frozenset[str] = frozenset()

    def describe(self) -> str:
        orgs = "".join(f",O={o}" for o in sorted(self.organizations))
        return f"CN={self.common_name}{orgs}"


def peer_subject(peercert: Mapping[str, Any] | None) -> Subject | None:
    """The subject of a verified peer certificate as ``SSLSocket.getpeercert()`` gives it; None
    when the client showed none (the dict is empty or missing) or it names no CN."""
    if not peercert:
        return None
    cn = ""
    orgs: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName" and not cn:
                cn = value
            elif attr == "organizationName":
                orgs.add(value)
    return Subject(cn, frozenset(orgs)) if cn else None


def certificate_credential(subject: Subject) -> str:
    """The cache's credential for a client authenticated by a certificate with ``subject``."""
    return "x509:" + subject.describe()


class Presented(enum.Enum):
    OWN = "own"  # no client certificate: the client's own headers go up as they are
    NODE = "node"  # the node's own identity: the proxy presents the node certificate upstream
    REFUSED = "refused"  # a verified certificate of someone else: 403


def judge(peer: Subject | None, node: Subject | None) -> Presented:
    """What to present upstream for a client whose verified certificate names ``peer`` (None:
    it showed none), on a proxy holding ``node``'s certificate (None: it holds none)."""
    if peer is None:
        return Presented.OWN
    if node is not None and peer == node:
        return Presented.NODE
    return Presented.REFUSED
