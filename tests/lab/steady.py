"""A continuous ping between two lab pods, to show that a fault loses no packet."""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time

from raven.lab.topology import Pod


class SteadyPing:
    """A ping every ``interval`` s (20 ms) between two pods for as long as the ``with`` block
    runs. Counted by sequence number: a request still in flight when the ping is stopped is not
    a loss, a hole before the last answer is (``lost`` lists them)."""

    def __init__(self, src: Pod, dst: Pod, *, interval: float = 0.02) -> None:
        self.src, self.dst, self.interval = src, dst, interval
        self.transmitted = self.received = 0
        self.lost: list[int] = []

    def start(self) -> SteadyPing:
        # Replies go to a file: a pipe nobody reads would fill and stall the ping.
        self.out = tempfile.TemporaryFile("w+")
        argv = ["ping", "-n", "-i", str(self.interval), "-W", "1", str(self.dst.ip)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.src.netns, *argv],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)
        return self

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        self.out.seek(0)
        out = self.out.read()
        self.out.close()
        found = re.search(r"(\d+) packets transmitted", out)
        assert found, f"no ping summary: {out[-500:]!r}"
        seqs = {int(m[1]) for m in re.finditer(r"icmp_seq=(\d+) ", out)}
        self.transmitted = max(seqs, default=0)
        self.received = len(seqs)
        self.lost = sorted(set(range(1, self.transmitted + 1)) - seqs)

    def __enter__(self) -> SteadyPing:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def assert_lossless(self) -> None:
        assert self.transmitted >= 10, f"the ping ran too short: {self.transmitted} sent"
        lost = self.transmitted - self.received
        assert lost == 0, (
            f"{self.src.name} -> {self.dst.name} lost {lost} of {self.transmitted} packets"
        )
