"""Write a file that holds a secret (a private key, a token, a kubeconfig) safely.

:func:`write_secret` gives the file mode 0600 whatever was there before (an older copy, a
leftover temporary file, a wide umask), replaces it atomically and makes the replacement
durable: the data is fsynced before the rename and the directory after it, so after a crash the
path holds either the old secret or the new one, never a torn or a lost one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SECRET_MODE = 0o600


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename (or a new entry) in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_secret(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Atomically replace ``path`` with ``data`` (str is encoded UTF-8) at mode 0600.

    The data goes to a new, randomly named file created exclusively (``O_EXCL``, so no leftover
    or planted file is reused) in the same directory, which is fsynced, renamed over ``path`` and
    followed by an fsync of the directory. Returns ``path``. On error nothing is left behind
    but the old file.
    """
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        # mkstemp already creates 0600; set it explicitly so no umask or platform can widen it.
        os.fchmod(fd, SECRET_MODE)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_directory(target.parent)
    return target
