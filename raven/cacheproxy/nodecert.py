"""The node's own client certificate, as the proxy presents it upstream for the node's clients.

``--node-cert`` and ``--node-key`` name the node's client certificate and key (on a cluster
kubelet's ``/var/lib/kubelet/pki/kubelet-client-current.pem``, one file holding both: give it
twice). :class:`NodeCertificate` holds a client SSL context that presents them and trusts the
API server's CA, and the certificate's subject, which decides which clients speak as the node
(raven/cacheproxy/identity.py).

kubelet rotates its certificate by pointing the file at a new one, so both files are looked at
(a ``stat`` each, no read) whenever the context is asked for, and loaded again when their inode,
size or mtime changed. A file that cannot be loaded (mid-rotation, say) keeps the last good pair
and is logged once. The key is read only by ``SSLContext.load_cert_chain``: it is never kept,
logged or written by the proxy, and errors name the files, not what is in them.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from raven.cacheproxy.identity import Subject

log = logging.getLogger(__name__)

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]


class NodeCertificateError(ValueError):
    """The node certificate or key could not be loaded (the message names the file only)."""


def certificate_subject(pem: bytes) -> Subject:
    """The subject (CN, O) of the first certificate in ``pem`` (a key beside it is skipped)."""
    block = _CERT_BLOCK.search(pem)
    if block is None:
        raise NodeCertificateError("no PEM certificate in it")
    try:
        cert = x509.load_pem_x509_certificate(block.group(0))
    except ValueError as e:
        raise NodeCertificateError("the certificate cannot be parsed") from e
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not cns:
        raise NodeCertificateError("the certificate names no CN")
    return Subject(str(cns[0].value), frozenset(str(o.value) for o in orgs))


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class NodeCertificate:
    """The node's client identity for upstream connections (see the module doc)."""

    def __init__(self, cert: Path, key: Path, ca_cert: Path) -> None:
        self.cert, self.key, self.ca_cert = cert, key, ca_cert
        self.reloads = 0  # times a changed pair was loaded since start
        self._error = ""
        self._stamp, self._context, self.subject = self._load()

    def _load(self) -> tuple[Stamp, ssl.SSLContext, Subject]:
        try:
            stamp = (_stamp(self.cert), _stamp(self.key))
            pem = self.cert.read_bytes()
        except OSError as e:
            raise NodeCertificateError(f"node certificate {self.cert}: {e.strerror}") from None
        try:
            subject = certificate_subject(pem)
        except NodeCertificateError as e:
            raise NodeCertificateError(f"node certificate {self.cert}: {e}") from None
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError):
            # Not the exception's text: it is OpenSSL's and names nothing but the failure.
            raise NodeCertificateError(
                f"node certificate {self.cert} and key {self.key} do not load as a pair"
            ) from None
        return stamp, context, subject

    def context(self) -> ssl.SSLContext:
        """The client context presenting the node's certificate, reloaded if the files changed."""
        try:
            stamp = (_stamp(self.cert), _stamp(self.key))
        except OSError:
            stamp = self._stamp  # gone for a moment (a rotation's rename): keep the last one
        if stamp != self._stamp:
            try:
                self._stamp, self._context, subject = self._load()
            except NodeCertificateError as e:
                self._stamp = stamp  # tried again when the files change again, not per request
                if str(e) != self._error:
                    log.error("keeping the last node certificate: %s", e)
                    self._error = str(e)
                return self._context
            self._error = ""
            self.reloads += 1
            if subject != self.subject:
                log.warning(
                    "node certificate subject changed: %s -> %s",
                    self.subject.describe(),
                    subject.describe(),
                )
            self.subject = subject
            log.info("node certificate reloaded: %s", subject.describe())
        return self._context
