"""Node identities: a kubelet-style client certificate from the lab CA authenticates as
``system:node:<name>`` in ``system:nodes``, through kubectl v1.32, as on a real cluster."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raven.lab.apiserver.kubeconfig import write_kubeconfig
from raven.lab.apiserver.pki import make_pki, node_client_name, node_clients
from raven.lab.testing.apiserver import run_apiserver

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_node_client_certificate_names_the_node_and_is_for_client_auth_only(tmp_path):
    pki = make_pki(tmp_path, ["127.0.0.1"], clients=node_clients(["edge-a-1"]))
    cert_path, key_path = pki.extra_pair(node_client_name("edge-a-1"))
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    subject = cert.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [
        "system:node:edge-a-1"
    ]
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:nodes"
    ]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()))
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_a_kubeconfig_has_a_token_or_a_client_certificate_not_both(tmp_path):
    with pytest.raises(ValueError):
        write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", tmp_path / "ca.crt")
    with pytest.raises(ValueError):
        write_kubeconfig(
            tmp_path / "kc",
            "https://127.0.0.1:1",
            tmp_path / "ca.crt",
            "token",
            client_cert=tmp_path / "c.crt",
            client_key=tmp_path / "c.key",
        )
    assert not (tmp_path / "kc").exists()


@needs_kubectl
def test_kubectl_with_a_node_certificate_is_that_node(tmp_path):
    with run_apiserver(tmp_path / "api", nodes=["edge-a-1"]) as api:
        review = json.loads(
            ok(
                api.kubectl(
                    "auth", "whoami", "-o", "json", kubeconfig=api.node_kubeconfig("edge-a-1")
                )
            )
        )
        user = review["status"]["userInfo"]
        assert user["username"] == "system:node:edge-a-1"
        assert user["groups"] == ["system:nodes", "system:authenticated"]
        # the admin's token is unaffected
        admin = json.loads(ok(api.kubectl("auth", "whoami", "-o", "json")))
        assert admin["status"]["userInfo"]["username"] == "raven-lab-admin"
        whoami = [
            e
            for e in api.audit_events()
            if e.get("objectRef", {}).get("resource") == "selfsubjectreviews"
        ]
        assert whoami[0]["user"]["username"] == "system:node:edge-a-1"


@needs_kubectl
def test_a_certificate_from_another_ca_is_refused(tmp_path):
    other = make_pki(tmp_path / "other", ["127.0.0.1"], clients=node_clients(["edge-a-1"]))
    cert, key = other.extra_pair(node_client_name("edge-a-1"))
    with run_apiserver(tmp_path / "api", nodes=["edge-a-1"]) as api:
        forged = write_kubeconfig(
            tmp_path / "forged", api.url, api.ca_cert, client_cert=cert, client_key=key
        )
        # the handshake ends: kubectl cannot even connect (as kube-apiserver answers a
        # certificate from an unknown authority)
        result = api.kubectl("get", "--raw", "/api/v1/nodes", kubeconfig=forged)
        assert result.returncode != 0
        assert "Unable to connect to the server" in result.stderr
        assert "system:node:edge-a-1" not in json.dumps(api.audit_events())
