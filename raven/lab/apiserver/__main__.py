"""``python -m raven.lab.apiserver``: run the lab's API server until SIGTERM or SIGINT.

    python -m raven.lab.apiserver --state-dir DIR --listen HOST:PORT --cert FILE --key FILE \
        --token-file FILE [--history N] [--event-ttl 1h] [--watch-queue-events N] \
        [--watch-queue-bytes N] [--audit-log-path FILE] \
        [--service-account-signing-key-file FILE] [--client-ca-file FILE] [--log-level debug]

The token in --token-file is the admin's (group system:masters). Service-account tokens come from
the TokenRequest API (``kubectl create token SA -n NS``). With --client-ca-file, a client
certificate signed by that CA authenticates as its CN in the groups of its O values (a node's:
system:node:NAME in system:nodes). Every other request is authorized by
RBAC from the stored Roles, ClusterRoles and bindings.

One log line per request at debug level; quiet (warnings only) by default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from pathlib import Path

from raven.lab.apiserver.api import DEFAULT_EVENT_TTL
from raven.lab.apiserver.server import ApiServer, ServerConfig
from raven.lab.apiserver.store import StateInUse
from raven.lab.apiserver.watch import MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(value: str) -> float:
    """Seconds from a Go duration ("1h", "1h0m0s", "90s", "500ms") or a plain number."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            if m is None:
                raise argparse.ArgumentTypeError(
                    f"{value!r} is not a duration (e.g. 1h, 30m, 90s, or seconds)"
                ) from None
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if not text:
            raise argparse.ArgumentTypeError("an empty duration") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {value!r}")
    return seconds


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m raven.lab.apiserver", description=__doc__.split("\n")[0]
    )
    p.add_argument("--state-dir", type=Path, required=True, help="where the object store lives")
    p.add_argument("--listen", type=_listen, required=True, help="HOST:PORT to serve HTTPS on")
    p.add_argument("--cert", type=Path, required=True, help="serving certificate (PEM)")
    p.add_argument("--key", type=Path, required=True, help="serving certificate's key (PEM)")
    p.add_argument("--token-file", type=Path, required=True, help="file holding the bearer token")
    p.add_argument(
        "--history",
        type=int,
        default=1000,
        help="watch events kept for resuming watches (default 1000)",
    )
    p.add_argument(
        "--bookmark-interval",
        type=float,
        default=5.0,
        help="seconds between watch BOOKMARK events (default 5)",
    )
    p.add_argument(
        "--event-ttl",
        type=_duration,
        default=DEFAULT_EVENT_TTL,
        help="how long an Event lives after its last write (default 1h, as kube-apiserver)",
    )
    p.add_argument(
        "--watch-queue-events",
        type=_positive,
        default=MAX_QUEUED_EVENTS,
        help=f"events one watch may hold for a client that does not read before it is closed "
        f"(default {MAX_QUEUED_EVENTS})",
    )
    p.add_argument(
        "--watch-queue-bytes",
        type=_positive,
        default=MAX_QUEUED_BYTES,
        help=f"bytes of objects one watch may hold likewise (default {MAX_QUEUED_BYTES})",
    )
    p.add_argument(
        "--audit-log-path",
        type=Path,
        default=None,
        help="append one audit.k8s.io/v1 Event (JSON) per request to FILE (default: none)",
    )
    p.add_argument(
        "--service-account-signing-key-file",
        type=Path,
        default=None,
        help="EC key that signs service-account tokens (default: STATE/sa-signing.key, made "
        "on first start)",
    )
    p.add_argument(
        "--client-ca-file",
        type=Path,
        default=None,
        help="CA (PEM) whose client certificates authenticate as their CN in the groups of their "
        "O values, as kube-apiserver's flag (default: no client certificates)",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="default: warning",
    )
    return p


async def _run(config: ServerConfig) -> None:
    server = ApiServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for path, what in (
        (args.cert, "--cert"),
        (args.key, "--key"),
        (args.token_file, "--token-file"),
        *([(args.client_ca_file, "--client-ca-file")] if args.client_ca_file else []),
    ):
        if not path.is_file():
            print(f"raven.lab.apiserver: {what} {path} does not exist", file=sys.stderr)
            return 2
    token = args.token_file.read_text().strip()
    if not token:
        print(f"raven.lab.apiserver: --token-file {args.token_file} is empty", file=sys.stderr)
        return 2
    if args.history < 1:
        print(
            f"raven.lab.apiserver: --history must be at least 1, got {args.history}",
            file=sys.stderr,
        )
        return 2
    host, port = args.listen
    config = ServerConfig(
        state_dir=args.state_dir,
        host=host,
        port=port,
        cert=args.cert,
        key=args.key,
        token=token,
        history=args.history,
        bookmark_interval=args.bookmark_interval,
        event_ttl=args.event_ttl,
        watch_queue_events=args.watch_queue_events,
        watch_queue_bytes=args.watch_queue_bytes,
        audit_log=args.audit_log_path,
        service_account_key=args.service_account_signing_key_file,
        client_ca=args.client_ca_file,
    )
    try:
        asyncio.run(_run(config))
    except StateInUse as e:
        print(f"raven.lab.apiserver: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
