"""A continuous ping between two lab pods, to show that a fault loses no packet."""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time

from raven.lab.topology import Pod


class SteadyPing:
    """A ping every 20 ms between two pods for as long as the ``with`` block runs."""

    def __init__(self, src: Pod, dst: Pod) -> None:
        self.src, self.dst = src, dst
        self.transmitted = self.received = 0

    def __enter__(self) -> SteadyPing:
        # Replies go to a file: a pipe nobody reads would fill and stall the ping.
        self.out = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.src.netns, "ping", "-n", "-i", "0.02", "-W", "1",
             str(self.dst.ip)],
            stdout=self.out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        self.out.seek(0)
        out = self.out.read()
        self.out.close()
        found = re.search(r"(\d+) packets transmitted", out)
        assert found, f"no ping summary: {out[-500:]!r}"
        seqs = {int(m[1]) for m in re.finditer(r"icmp_seq=(\d+) ", out)}
        # Count by sequence number: a request still in flight when the ping was stopped is
        # not a loss, a hole before the last answer is.
        self.transmitted = max(seqs, default=0)
        self.received = len(seqs)

    def assert_lossless(self) -> None:
        assert self.transmitted >= 10, f"the ping ran too short: {self.transmitted} sent"
        lost = self.transmitted - self.received
        assert lost == 0, (
            f"{self.src.name} -> {self.dst.name} lost {lost} of {self.transmitted} packets"
        )
