"""A Docker engine for building Raven's image and for the container tests.

:func:`engine` uses the engine ``DOCKER_HOST`` names, else the system's (``/var/run/docker.sock``),
else starts Raven's own ``dockerd`` and stops it again once nobody uses it. Raven's own engine
keeps to itself: its own socket, pidfile, exec-root and containerd namespace under
``/run/raven-docker``, its images in ``/var/lib/raven-docker`` (kept between runs, so a second
image build reuses the base and the cached layers), and neither bridge nor iptables rules, so it
changes nothing in the host's network. Containers run with ``--network none`` or in a namespace
the caller provides; builds use ``--network host``.

Several users (two test sessions, ``make image`` during a test run) share one engine: each holds a
shared lock while it uses it, and whoever leaves last stops the engine Raven started. An engine
Raven did not start is never stopped.

``python -m raven.lab.dockerd run -- CMD ...`` runs CMD with ``DOCKER_HOST`` and ``DOCKER`` (the
client command) set, inside such an engine (``make image`` uses it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path("/run/raven-docker")
DATA_ROOT = Path("/var/lib/raven-docker")
SOCKET = RUN_DIR / "docker.sock"
PIDFILE = RUN_DIR / "dockerd.pid"
USERS_LOCK = RUN_DIR / "users.lock"  # shared while in use; exclusive to start or stop
LOG = RUN_DIR / "dockerd.log"
SYSTEM_SOCKET = Path("/var/run/docker.sock")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class DockerError(RuntimeError):
    """No engine could be found or started; the message says why."""


@dataclass(frozen=True)
class Engine:
    """A running engine: ``cli`` is the client to run, ``host`` its ``DOCKER_HOST``."""

    cli: str
    host: str
    ours: bool  # started by Raven (stopped by its last user), not the system's

    def env(self) -> dict[str, str]:
        """The environment for a subprocess that should use this engine."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER": self.cli}

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine; raises :class:`DockerError` when ``check`` and
        it fails, quoting its stderr."""
        proc = subprocess.run(
            [self.cli, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise DockerError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
        return proc


def client() -> str:
    """The Docker client: Debian's (``docker.io``, the same release as its engine) first."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise DockerError("no docker client: install Debian's docker.io (make test does)")


def answers(cli: str, host: str) -> bool:
    """True when an engine answers at ``host``."""
    try:
        proc = subprocess.run(
            [cli, "version", "--format", "{{.Server.Version}}"],
            env={**os.environ, "DOCKER_HOST": host},
            capture_output=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _our_pid() -> int | None:
    """PID of the dockerd Raven started, if it still runs."""
    try:
        pid = int(PIDFILE.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if os.path.basename(cmdline[0]) != b"dockerd" or str(PIDFILE).encode() not in cmdline:
        return None
    return pid


def _start(cli: str) -> None:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        raise DockerError("no dockerd: install Debian's docker.io (make test does)")
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    argv = [
        dockerd,
        "--host",
        f"unix://{SOCKET}",
        "--pidfile",
        str(PIDFILE),
        "--data-root",
        str(DATA_ROOT),
        "--exec-root",
        str(RUN_DIR / "exec"),
        "--containerd-namespace",
        "raven-docker",
        "--containerd-plugins-namespace",
        "raven-docker-plugins",
        # The host's network stays as it is: no docker0, no NAT or filter rules.
        "--bridge",
        "none",
        "--iptables=false",
        "--ip6tables=false",
    ]
    with open(LOG, "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(cli, f"unix://{SOCKET}"):
        if proc.poll() is not None:
            raise DockerError(f"dockerd exited with {proc.returncode}; see {LOG}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise DockerError(f"dockerd did not answer within {START_TIMEOUT:.0f} s; see {LOG}")
        time.sleep(0.3)


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _our_pid() == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    if _our_pid() == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """An engine for the duration of the block (see the module's docstring for which)."""
    cli = client()
    given = os.environ.get("DOCKER_HOST")
    if given:
        if not answers(cli, given):
            raise DockerError(f"DOCKER_HOST={given} does not answer")
        yield Engine(cli, given, ours=False)
        return
    if SYSTEM_SOCKET.exists() and answers(cli, f"unix://{SYSTEM_SOCKET}"):
        yield Engine(cli, f"unix://{SYSTEM_SOCKET}", ours=False)
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    host = f"unix://{SOCKET}"
    with open(USERS_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # one of its users from here on
        if _our_pid() is None or not answers(cli, host):
            # Starting takes the lock alone: it waits for anyone still stopping an engine.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if _our_pid() is None or not answers(cli, host):
                    _start(cli)
            finally:
                fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield Engine(cli, host, ours=True)
        finally:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # someone else still uses it; the last one stops it
            else:
                pid = _our_pid()
                if pid is not None:
                    _stop(pid)
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "run" or args[1] != "--":
        print("usage: python -m raven.lab.dockerd run -- CMD [ARGS...]", file=sys.stderr)
        return 2
    try:
        with engine() as eng:
            return subprocess.run(args[2:], env=eng.env()).returncode
    except DockerError as error:
        print(f"docker engine: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
