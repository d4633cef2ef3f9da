"""The node's path to the API server: decided by ``raven-heartbeat``, followed by the cache-proxy.

The heartbeat writes one small JSON file (atomically: a new file renamed over the old one); the
node's cache-proxy reads it again whenever it changes and sends its upstream traffic accordingly:

- ``direct``: straight to the API server (the default, and what a missing file means);
- ``via``: through the HTTP CONNECT relay ``proxy`` (``http://IP:PORT``) of pool member ``via``,
  over the pool's LAN; TLS stays end to end, so the relay never sees a credential;
- ``none``: the node reaches the API server neither way (the cache-proxy keeps serving its cache).

The file carries no secret. A malformed file is refused with an error naming what is wrong, and
the reader keeps the last good path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

DIRECT, VIA, NONE = "direct", "via", "none"
MODES = (DIRECT, VIA, NONE)


class CloudPathError(ValueError):
    """A path file or value that is not a valid cloud path."""


@dataclass(frozen=True)
class CloudPath:
    mode: str = DIRECT
    via: str = ""  # the relaying node's name, for ``via``
    proxy: str = ""  # its relay, ``http://IP:PORT``, for ``via``
    since: float = 0.0  # Unix time the mode began

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CloudPathError(f"cloud path mode {self.mode!r}: expected one of {MODES}")
        if self.mode == VIA:
            if not self.via:
                raise CloudPathError("cloud path 'via' names no node")
            check_proxy_url(self.proxy)
        elif self.via or self.proxy:
            raise CloudPathError(f"cloud path {self.mode!r} takes no relay")

    def describe(self) -> str:
        """``direct``, ``via NODE`` or ``none``: what ``raven lab status`` shows."""
        return f"via {self.via}" if self.mode == VIA else self.mode

    def same_route(self, other: CloudPath) -> bool:
        """True when both send traffic the same way (``since`` aside)."""
        return (self.mode, self.via, self.proxy) == (other.mode, other.via, other.proxy)


def check_proxy_url(url: str) -> str:
    """``http://IP:PORT`` with an IP literal and a port, else CloudPathError naming the fault."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise CloudPathError(f"relay URL {url!r}: expected http://IP:PORT")
    try:
        ipaddress.ip_address(parts.hostname or "")
        port = parts.port
    except ValueError as e:
        raise CloudPathError(f"relay URL {url!r}: {e}") from e
    if port is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise CloudPathError(f"relay URL {url!r}: expected http://IP:PORT and nothing else")
    return url


def parse(text: str) -> CloudPath:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise CloudPathError(f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CloudPathError("not a JSON object")
    unknown = set(doc) - {"mode", "via", "proxy", "since"}
    if unknown:
        raise CloudPathError(f"unknown fields {sorted(unknown)}")
    mode, via, proxy, since = (
        doc.get("mode", DIRECT),
        doc.get("via", ""),
        doc.get("proxy", ""),
        doc.get("since", 0.0),
    )
    if not all(isinstance(v, str) for v in (mode, via, proxy)):
        raise CloudPathError("mode, via and proxy must be strings")
    if not isinstance(since, int | float) or isinstance(since, bool):
        raise CloudPathError("since must be a number")
    return CloudPath(mode, via, proxy, float(since))


def read_path(file: Path) -> CloudPath:
    """The path in ``file``; ``direct`` when there is none. CloudPathError when malformed."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        return CloudPath()
    except OSError as e:
        raise CloudPathError(f"{file}: {e}") from e
    try:
        return parse(text)
    except CloudPathError as e:
        raise CloudPathError(f"{file}: {e}") from e


def write_path(file: Path, path: CloudPath) -> None:
    """Replace ``file`` with ``path`` atomically (readers see the old or the new one, whole)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(path), f)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PathFollower:
    """Reads ``file`` again only when its identity or mtime changed; keeps the last good path
    when the file turns malformed (``error`` says why)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.current = CloudPath()
        self.error = ""
        self._stamp: tuple[int, int, int] | None = None

    def poll(self) -> bool:
        """Re-read if changed; True when the route (mode, relay) changed."""
        try:
            st = self.file.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = read_path(self.file)
        except CloudPathError as e:
            self.error = str(e)
            return False
        self.error = ""
        changed = not new.same_route(self.current)
        self.current = new
        return changed
