"""Who is asking: the admin token, service-account tokens and client certificates, as
kube-apiserver knows them.

- The admin token (the lab's kubeconfig) is user ``raven-lab-admin`` in group ``system:masters``,
  which kube-apiserver lets do anything without asking RBAC.
- A service-account token is what kube-apiserver's TokenRequest API (``kubectl create token``)
  issues: a JWT signed by the server's own key (ES256), with the claims kube-apiserver puts in
  bound tokens (``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``nbf``, ``jti`` and
  ``kubernetes.io`` naming the namespace and the account's name and uid). Nothing is stored per
  token: the signature proves the server issued it, and the token stops working when it expires
  or when its ServiceAccount is deleted (the uid no longer matches), as on a cluster. Such a user
  is ``system:serviceaccount:<ns>:<name>`` in the groups ``system:serviceaccounts``,
  ``system:serviceaccounts:<ns>`` and ``system:authenticated``.

- A client certificate signed by the lab CA (kube-apiserver's x509 authenticator) is the user
  named by its CN in the groups named by its O values, plus ``system:authenticated``. A node's
  (a kubelet's) is ``system:node:<name>`` in ``system:nodes`` (:func:`node_user`); the server
  checks the chain during the TLS handshake, :func:`certificate_user` reads the subject.

The signing key lives in the state directory (mode 0600), so tokens survive a restart of the
server; the random ``jti`` and a 256-bit ECDSA signature make them unguessable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from raven.secretfile import write_secret

# kube-apiserver's usual --service-account-issuer and --api-audiences.
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)
ADMIN_NAME = "raven-lab-admin"
SA_PREFIX = "system:serviceaccount:"
NODE_GROUP = "system:nodes"
NODE_PREFIX = "system:node:"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


ADMIN = UserInfo(ADMIN_NAME, ("system:masters", "system:authenticated"))


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    return UserInfo(
        f"{SA_PREFIX}{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        uid,
    )


def service_account_of(username: str) -> tuple[str, str] | None:
    """(namespace, name) of a ``system:serviceaccount:<ns>:<name>`` user, else None."""
    if not username.startswith(SA_PREFIX):
        return None
    namespace, sep, name = username[len(SA_PREFIX) :].partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


def node_user(name: str) -> UserInfo:
    """Node ``name``'s identity, as its kubelet's client certificate gives it."""
    return UserInfo(f"{NODE_PREFIX}{name}", (NODE_GROUP, AUTHENTICATED))


def node_of(username: str) -> str | None:
    """The node name of a ``system:node:<name>`` user, else None."""
    if not username.startswith(NODE_PREFIX):
        return None
    name = username[len(NODE_PREFIX) :]
    return name if name and ":" not in name else None


def certificate_user(der: bytes) -> UserInfo | None:
    """The user a verified client certificate (DER) names: CN as the name, the O values and
    ``system:authenticated`` as the groups; None when it names nobody (no CN)."""
    try:
        subject = x509.load_der_x509_certificate(der).subject
    except ValueError:
        return None
    common = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common or not common[0].value:
        return None
    groups = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if AUTHENTICATED not in groups:
        groups.append(AUTHENTICATED)
    return UserInfo(str(common[0].value), tuple(groups))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    namespace: str
    name: str
    uid: str
    audiences: tuple[str, ...]
    expires: int


class TokenIssuer:
    """Signs and checks service-account JWTs with one EC P-256 key kept in ``key_file``."""

    def __init__(
        self,
        key_file: Path,
        *,
        issuer: str = ISSUER,
        audiences: Sequence[str] = API_AUDIENCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audiences = tuple(audiences)
        self._clock = clock
        if key_file.exists():
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_file}: not an EC private key")
            self._key = loaded
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
            key_file.parent.mkdir(parents=True, exist_ok=True)
            pem = self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_secret(key_file, pem)
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = _b64(hashlib.sha256(der).digest())

    def mint(
        self,
        namespace: str,
        name: str,
        uid: str,
        *,
        audiences: Sequence[str] | None = None,
        expiration_seconds: int = 3600,
    ) -> tuple[str, int]:
        """A signed token for the ServiceAccount and its expiry (Unix seconds)."""
        now = int(self._clock())
        expires = now + expiration_seconds
        header = {"alg": "ES256", "kid": self.key_id, "typ": "JWT"}
        claims = {
            "aud": list(audiences or self.audiences),
            "exp": expires,
            "iat": now,
            "iss": self.issuer,
            "jti": str(uuid.UUID(bytes=secrets.token_bytes(16), version=4)),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
            "nbf": now,
            "sub": f"{SA_PREFIX}{namespace}:{name}",
        }
        signing_input = ".".join(
            _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64(signature)}", expires

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a token this server issued for its own audiences and that has not
        expired; None for anything else (a forged, foreign, expired or malformed token)."""
        try:
            head, body, sig = token.split(".")
            header = json.loads(_unb64(head))
            raw_sig = _unb64(sig)
            if header.get("alg") != "ES256" or len(raw_sig) != 64:
                return None
            der = encode_dss_signature(
                int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
            )
            self._key.public_key().verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
            claims = json.loads(_unb64(body))
            now = self._clock()
            if claims.get("iss") != self.issuer:
                return None
            if not (int(claims["nbf"]) - 60 <= now < int(claims["exp"])):
                return None
            audiences = tuple(claims.get("aud") or ())
            if not set(audiences) & set(self.audiences):
                return None
            k8s = claims["kubernetes.io"]
            sa = k8s["serviceaccount"]
            if claims.get("sub") != f"{SA_PREFIX}{k8s['namespace']}:{sa['name']}":
                return None
            return TokenClaims(
                str(k8s["namespace"]),
                str(sa["name"]),
                str(sa["uid"]),
                audiences,
                int(claims["exp"]),
            )
        except (ValueError, KeyError, TypeError, InvalidSignature, AttributeError):
            return None
