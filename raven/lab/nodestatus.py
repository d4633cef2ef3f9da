"""``raven lab node-status NODE``: ``raven status --node`` for a lab node.

A lab node's agent serves ``/status`` on port 10262 inside the node's network namespace, which
the host cannot reach; this asks it from inside that namespace with curl, so only loopback in
the lab's own namespace carries the request.
"""

from __future__ import annotations

import subprocess
from typing import Any

from raven.lab.netns import in_netns
from raven.overview.nodeclient import HEALTH_PORT, NodeStatusError, parse


def fetch(netns: str, *, port: int = HEALTH_PORT, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's ``/status`` document, asked inside ``netns``."""
    url = f"http://127.0.0.1:{port}/status"
    argv = in_netns(netns, ["curl", "-sS", "--fail-with-body", "--max-time", str(timeout), url])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip())[:300]
        raise NodeStatusError(f"{url} in {netns}: {why or f'curl exited {done.returncode}'}")
    return parse(done.stdout, f"{url} in {netns}")
