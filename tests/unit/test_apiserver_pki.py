"""The lab PKI: an extra serving certificate from the lab CA (the cache proxies' one)."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from raven.lab.apiserver.pki import make_pki


def test_extra_certificate_is_signed_by_the_lab_ca_for_its_hosts_with_a_private_key(tmp_path):
    pki = make_pki(tmp_path, ["198.18.0.2"], extra={"cache-proxy": ["127.0.0.1", "localhost"]})
    cert_path, key_path = pki.extra_pair("cache-proxy")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    # a TLS server can load the pair, and a client trusting the lab CA accepts it for 127.0.0.1
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == [
        "ca.crt",
        "cache-proxy.crt",
        "cache-proxy.key",
        "server.crt",
        "server.key",
        "token",
    ]


@pytest.mark.parametrize("name", ["server", "ca", "../x", "a b"])
def test_extra_certificate_names_that_would_clash_or_escape_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="reserved or unsafe"):
        make_pki(tmp_path, ["127.0.0.1"], extra={name: ["127.0.0.1"]})
    assert not list(Path(tmp_path).iterdir())
