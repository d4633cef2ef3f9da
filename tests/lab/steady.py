"""A continuous ping between two lab pods, to show that a fault loses no packet."""

from __future__ import annotations

import re
import signal
import subprocess
import time

from raven.lab.topology import Pod


class SteadyPing:
    """A ping every 20 ms between two pods for as long as the ``with`` block runs."""

    def __init__(self, src: Pod, dst: Pod) -> None:
        self.src, self.dst = src, dst
        self.transmitted = self.received = 0

    def __enter__(self) -> SteadyPing:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.src.netns, "ping", "-n", "-q", "-i", "0.02", "-W", "1",
             str(self.dst.ip)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=10)
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert found, f"no ping summary: {out!r} {err!r}"
        self.transmitted, self.received = int(found[1]), int(found[2])

    def assert_lossless(self) -> None:
        assert self.transmitted >= 10, f"the ping ran too short: {self.transmitted} sent"
        lost = self.transmitted - self.received
        assert lost == 0, (
            f"{self.src.name} -> {self.dst.name} lost {lost} of {self.transmitted} packets"
        )
