"""A continuous ping between two lab pods, to show that a fault loses no packet."""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile

from raven.lab.topology import Pod

from .labkit import read_output, wait_for

#: What ping prints on SIGQUIT: "received/transmitted packets, ...".
SUMMARY = re.compile(r"\d+/(\d+) packets, ")


class SteadyPing:
    """A ping every ``interval`` s (20 ms) between two pods for as long as the ``with`` block
    runs. It starts once the first answer came and stops once an answer came to a request sent
    after the block ended, so every request sent while the block ran is either answered or
    lost, never just in flight. Counted by sequence number: a hole before the last answer is a
    loss (``lost`` lists them)."""

    def __init__(self, src: Pod, dst: Pod, *, interval: float = 0.02) -> None:
        self.src, self.dst, self.interval = src, dst, interval
        self.transmitted = self.received = 0
        self.lost: list[int] = []

    def start(self, *, deadline: float = 30) -> SteadyPing:
        """Start pinging; returns once replies flow, so a fault made next is seen by the ping."""
        # Replies go to a file: a pipe nobody reads would fill and stall the ping.
        self.out = tempfile.TemporaryFile("w+")
        argv = ["ping", "-n", "-i", str(self.interval), "-W", "1", str(self.dst.ip)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.src.netns, *argv],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def answered() -> bool:
            assert self.proc.poll() is None, f"ping exited: {self._output()[-500:]!r}"
            return "icmp_seq=" in self._output()

        try:
            wait_for(
                answered, deadline, f"{self.src.name} -> {self.dst.name} answering", interval=0.05
            )
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _output(self) -> str:
        return read_output(self.out)

    def _answered(self) -> set[int]:
        return {int(m[1]) for m in re.finditer(r"icmp_seq=(\d+) ", self._output())}

    def _sent_so_far(self, deadline: float) -> int:
        """How many requests the ping has sent: SIGQUIT makes it print "answered/sent packets"
        and carry on."""
        reports = len(SUMMARY.findall(self._output()))
        self.proc.send_signal(signal.SIGQUIT)

        def reported() -> bool:
            assert self.proc.poll() is None, f"ping exited: {self._output()[-500:]!r}"
            return len(SUMMARY.findall(self._output())) > reports

        wait_for(reported, deadline, "ping to say how many it sent", interval=0.02)
        return int(SUMMARY.findall(self._output())[reports])

    def stop(self, *, check: bool = True, deadline: float = 30) -> None:
        """Stop the ping and count; with ``check``, first wait until a request sent after this
        call is answered (the path works again after whatever the test did)."""
        if self.out.closed:
            return  # stopped already
        try:
            if check:
                sent = self._sent_so_far(deadline)

                def answered_after() -> bool:
                    assert self.proc.poll() is None, f"ping exited: {self._output()[-500:]!r}"
                    return max(self._answered(), default=0) > sent

                describe = f"{self.src.name} -> {self.dst.name} to answer a request sent now"
                wait_for(answered_after, deadline, describe, interval=0.05)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=10)
            out = self._output()
            self.out.close()
        if not check:
            return
        found = re.search(r"(\d+) packets transmitted", out)
        assert found, f"no ping summary: {out[-500:]!r}"
        seqs = {int(m[1]) for m in re.finditer(r"icmp_seq=(\d+) ", out)}
        self.transmitted = max(seqs, default=0)
        self.received = len(seqs)
        self.lost = sorted(set(range(1, self.transmitted + 1)) - seqs)

    def __enter__(self) -> SteadyPing:
        return self.start()

    def __exit__(self, kind: object, *exc: object) -> None:
        self.stop(check=kind is None)  # a test failing inside the block says why, not this

    def assert_lossless(self) -> None:
        assert self.received > 0, f"{self.src.name} -> {self.dst.name} was never answered"
        lost = self.transmitted - self.received
        assert lost == 0, (
            f"{self.src.name} -> {self.dst.name} lost {lost} of {self.transmitted} packets"
        )
