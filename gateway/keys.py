"""The node's WireGuard key pair: made once, kept in the state folder, never logged.

The private key lives in ``<state_dir>/wireguard.key`` with mode 0600 from creation, whatever
was there before (written with :func:`raven.secretfile.write_secret`: atomically and durably, so
a crash never leaves half a key nor loses a key the node has already published); the public key
is derived from it on every load, so the two cannot disagree. ``KeyPair``'s repr hides the
private key, so it cannot end up in a log line.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from raven.secretfile import write_secret

KEY_FILE = "wireguard.key"


class BadKey(Exception):
    """A key is unusable; the message names the file (when there is one) and why."""


@dataclass(frozen=True)
class KeyPair:
    public_key: str
    private_key: str = field(repr=False)
    path: Path = field(repr=False)


def public_key_of(private_key: str) -> str:
    """Base64 X25519 public key for a base64 private key; BadKey if it is not one."""
    try:
        raw = base64.b64decode(private_key, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("private key is not valid base64") from None
    if len(raw) != 32:
        raise BadKey(f"private key is {len(raw)} bytes, WireGuard keys are 32")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(
        pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def valid_public_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _generate() -> str:
    raw = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def load_or_create(state_dir: str | os.PathLike[str]) -> KeyPair:
    """The node's key pair, created on first call and reused afterwards."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Someone widened it; narrow it again rather than keep a readable private key.
            os.chmod(path, 0o600)
        private = path.read_text().strip()
        try:
            public = public_key_of(private)
        except BadKey as e:
            raise BadKey(f"{path}: {e}") from None
        return KeyPair(public, private, path)
    private = _generate()
    write_secret(path, private + "\n")
    return KeyPair(public_key_of(private), private, path)


def remove(state_dir: str | os.PathLike[str]) -> bool:
    """Delete the stored key (uninstall); True when there was one."""
    path = Path(state_dir) / KEY_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
