"""Logging for every Raven process: ``console`` (one readable line per record, the lab's and the
benchmarks' parsers read it) or ``json`` (one JSON object per line for log collectors; the
DaemonSet's default).

Both go through the standard library's logging, so every module logs with
``logging.getLogger(__name__)``; in JSON mode structlog renders each record with its time (UTC,
ISO 8601), level, logger name and message, plus the exception when there is one.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]
CONSOLE = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(log_format: str = "console", *, level: int = logging.INFO) -> None:
    """Send the process's logs to stderr in ``log_format``; ValueError for an unknown one."""
    if log_format not in ("console", "json"):
        raise ValueError(f"log format must be 'console' or 'json', got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
            )
        )
    else:
        handler.setFormatter(logging.Formatter(CONSOLE))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
