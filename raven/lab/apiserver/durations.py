"""Ages as kubectl prints them ("5m", "3d4h"), from Kubernetes timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any


def human_duration(seconds: float) -> str:
    """Kubernetes' ``duration.HumanDuration`` (the AGE column)."""
    if seconds < -1:
        return "<invalid>"
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if h < 24 * 365 * 2:
        return f"{d}d"
    y = d // 365
    if y < 8:
        return f"{y}y{d % 365}d" if d % 365 else f"{y}y"
    return f"{y}y"


def age(timestamp: Any, now: dt.datetime | None = None) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        t = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return human_duration(((now or dt.datetime.now(dt.UTC)) - t).total_seconds())
