"""Certificates and the bearer token for the lab's API server.

The lab makes its own CA on every ``up`` and signs one serving certificate for the addresses the
API server answers on, plus any extra serving certificates asked for at the same time (the lab's
cache proxies serve 127.0.0.1 with one), plus client certificates (ExtendedKeyUsage clientAuth)
with a given subject: a node's is ``CN=system:node:<name>, O=system:nodes``, as a kubelet's on a
cluster (:func:`node_clients`). The CA key is never written. Private keys and the token are
written with mode 0600 whatever was there before (:func:`raven.secretfile.write_secret`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raven.secretfile import write_secret


@dataclass(frozen=True)
class Pki:
    """Paths of what :func:`make_pki` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    token_file: Path

    @classmethod
    def at(cls, directory: Path) -> Pki:
        """The files :func:`make_pki` writes in ``directory``."""
        return cls(
            ca_cert=directory / "ca.crt",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
            token_file=directory / "token",
        )

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def extra_pair(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of the extra serving or client certificate ``name`` (see
        ``make_pki``)."""
        directory = self.ca_cert.parent
        return directory / f"{name}.crt", directory / f"{name}.key"


def node_client_name(node: str) -> str:
    """The name (file stem) of node ``node``'s client certificate in the lab's PKI."""
    return f"node-{node}"


def node_serving_name(node: str) -> str:
    """The extra serving pair of ``node``'s kubelet (its pool feed presents it)."""
    return f"kubelet-serving-{node}"


def node_clients(nodes: Iterable[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``make_pki(clients=...)`` for kubelet-style identities of ``nodes``:
    ``CN=system:node:<node>``, ``O=system:nodes``."""
    return {node_client_name(n): (f"system:node:{n}", ("system:nodes",)) for n in nodes}


def _name(cn: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def _serving_pair(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    hosts: Sequence[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[bytes, bytes]:
    """A serving certificate for ``hosts`` signed by the CA, and its key, both as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _client_pair(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    organizations: Sequence[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[bytes, bytes]:
    """A client certificate with subject ``O=<organizations>, CN=<cn>`` signed by the CA, and
    its key, both as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_name(name: str, what: str) -> None:
    if name in ("ca", "server", "token") or not name.replace("-", "").isalnum():
        raise ValueError(f"make_pki: {what} certificate name {name!r} is reserved or unsafe")


def make_pki(
    directory: Path,
    hosts: list[str],
    *,
    days: int = 365,
    extra: Mapping[str, Sequence[str]] | None = None,
    clients: Mapping[str, tuple[str, Sequence[str]]] | None = None,
) -> Pki:
    """Write a fresh CA, a server certificate for ``hosts`` (IPs or DNS names) and a token.

    Files: ``ca.crt``, ``server.crt``, ``server.key`` (0600), ``token`` (0600). ``extra`` maps a
    name to the hosts of one more serving certificate from the same CA, written as
    ``<name>.crt`` and ``<name>.key`` (0600); :meth:`Pki.extra_pair` finds them. ``clients``
    maps a name to the (common name, organizations) of a client certificate from the same CA,
    written and found the same way; the API server takes such a certificate's CN as the user
    and its O values as the groups (:func:`node_clients` makes the nodes' ones).
    """
    if not hosts:
        raise ValueError("make_pki needs at least one host for the certificate")
    if set(extra or {}) & set(clients or {}):
        raise ValueError("make_pki: a name is both an extra and a client certificate")
    for name, (cn, _) in (clients or {}).items():
        _check_name(name, "client")
        if not cn:
            raise ValueError(f"make_pki: client certificate {name!r} needs a common name")
    for name, extra_hosts in (extra or {}).items():
        _check_name(name, "extra")
        if not extra_hosts:
            raise ValueError(f"make_pki: extra certificate {name!r} needs at least one host")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("raven-lab-ca"))
        .issuer_name(_name("raven-lab-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = Pki.at(directory)
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_pem, key_pem = _serving_pair(
        ca_key, ca_cert, "raven-lab-apiserver", hosts, not_before, not_after
    )
    pki.server_cert.write_bytes(cert_pem)
    write_secret(pki.server_key, key_pem)
    for name, extra_hosts in (extra or {}).items():
        cert_pem, key_pem = _serving_pair(
            ca_key, ca_cert, f"raven-lab-{name}", extra_hosts, not_before, not_after
        )
        cert_path, key_path = pki.extra_pair(name)
        cert_path.write_bytes(cert_pem)
        write_secret(key_path, key_pem)
    for name, (cn, organizations) in (clients or {}).items():
        cert_pem, key_pem = _client_pair(ca_key, ca_cert, cn, organizations, not_before, not_after)
        cert_path, key_path = pki.extra_pair(name)
        cert_path.write_bytes(cert_pem)
        write_secret(key_path, key_pem)
    write_secret(pki.token_file, (secrets.token_urlsafe(32) + "\n").encode())
    return pki
