"""TCP MSS clamp on the gateway, in a chain Raven owns.

Traffic leaving through the tunnel has a smaller MTU than the pods believe; clamping the MSS of
forwarded SYNs to the path MTU keeps TCP from stalling on black-holed large segments. Everything
lives in the ``mangle`` chain :data:`CHAIN` plus one jump from ``FORWARD`` tagged with the comment
:data:`COMMENT`, so removal takes out exactly what was added. Driven through ``iptables`` in
the current namespace (or ``ip netns exec NS`` when ``netns`` is given).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from raven.netlink.errors import NetlinkError

CHAIN = "RAVEN-MSS"
COMMENT = "raven: tcp mss clamp"
_JUMP = ["FORWARD", "-m", "comment", "--comment", COMMENT, "-j", CHAIN]


def _clamp_rule(out_dev: str | None) -> list[str]:
    rule = [CHAIN, "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN"]
    if out_dev:
        rule += ["-o", out_dev]
    return rule + ["-j", "TCPMSS", "--clamp-mss-to-pmtu"]


class MssClamp:
    """Idempotent install/remove of the clamp. ``writes`` counts iptables changes."""

    def __init__(self, *, netns: str | None = None, iptables: str = "iptables") -> None:
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.iptables = iptables
        self.writes = 0

    def _run(self, args: Sequence[str], *, check: bool = True) -> bool:
        cmd = [*self.prefix, self.iptables, "-w", "5", "-t", "mangle", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise NetlinkError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        return proc.returncode == 0

    def _chain_exists(self) -> bool:
        return self._run(["-n", "-L", CHAIN], check=False)

    def rules(self) -> list[str]:
        """Our chain's rules as ``iptables -S`` prints them ([] when absent)."""
        if not self._chain_exists():
            return []
        cmd = [*self.prefix, self.iptables, "-w", "5", "-t", "mangle", "-S", CHAIN]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def ensure(self, out_dev: str | None = None) -> bool:
        """Install the clamp (for traffic out of ``out_dev``, or all forwarded traffic).
        Return True when anything had to change."""
        changed = False
        want = _clamp_rule(out_dev)
        if not self._chain_exists():
            self._run(["-N", CHAIN])
            self.writes += 1
            changed = True
        current = self.rules()
        if len(current) != 1 or not self._run(["-C", *want], check=False):
            if current:
                self._run(["-F", CHAIN])
                self.writes += 1
            self._run(["-A", *want])
            self.writes += 1
            changed = True
        if not self._run(["-C", *_JUMP], check=False):
            self._run(["-A", *_JUMP])
            self.writes += 1
            changed = True
        return changed

    def remove(self) -> bool:
        """Remove the jump(s) and the chain; True when anything was there."""
        changed = False
        while self._run(["-D", *_JUMP], check=False):
            self.writes += 1
            changed = True
        if self._chain_exists():
            self._run(["-F", CHAIN])
            self._run(["-X", CHAIN])
            self.writes += 2
            changed = True
        return changed
