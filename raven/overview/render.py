"""DOT to PNG or SVG with Graphviz's ``dot`` (Debian's ``graphviz`` package)."""

from __future__ import annotations

import shutil
import subprocess

FORMATS = ("png", "svg")


class GraphvizError(Exception):
    """``dot`` is missing or refused the graph."""


def render(dot_text: str, fmt: str, *, dot: str = "dot", timeout: float = 60.0) -> bytes:
    """``dot_text`` rendered as ``fmt`` (png or svg)."""
    if fmt not in FORMATS:
        raise ValueError(f"cannot render {fmt!r}: expected one of {', '.join(FORMATS)}")
    binary = shutil.which(dot)
    if binary is None:
        raise GraphvizError(
            f"{dot!r} not found: install Graphviz (Debian: apt-get install graphviz), "
            "or use -o dot and render it elsewhere"
        )
    done = subprocess.run(
        [binary, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=timeout
    )
    if done.returncode != 0:
        raise GraphvizError(f"dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
