"""``python -m raven.lab.apiserver``: run the lab's API server until SIGTERM or SIGINT.

    python -m raven.lab.apiserver --state-dir DIR --listen HOST:PORT --cert FILE --key FILE \
        --token-file FILE [--history N] [--log-level debug]

One log line per request at debug level; quiet (warnings only) by default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from raven.lab.apiserver.server import ApiServer, ServerConfig
from raven.lab.apiserver.store import StateInUse


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
    )
    try:
        asyncio.run(_run(config))
    except StateInUse as e:
        print(f"raven.lab.apiserver: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
