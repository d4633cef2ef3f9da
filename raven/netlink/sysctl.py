"""IPv4 forwarding switch for the current network namespace.

The agent runs inside its node's namespace, so ``/proc/sys/net/ipv4/ip_forward`` there is the
node's own switch. The write happens only when the value differs (zero writes when nothing to
change). Raven turns forwarding on for a gateway and leaves it as found otherwise: other
components on the node may rely on it, so it is never switched off behind their back.
"""

from __future__ import annotations

from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def ip_forward_enabled(path: Path = IP_FORWARD) -> bool:
    return path.read_text().strip() == "1"


def ensure_ip_forward(enabled: bool = True, *, path: Path = IP_FORWARD) -> bool:
    """Set forwarding to ``enabled``; return True when that took a write."""
    if ip_forward_enabled(path) == enabled:
        return False
    path.write_text("1\n" if enabled else "0\n")
    return True
