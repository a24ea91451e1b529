"""What every dashboard query is narrowed by: a time range, models, status, text search.

The time bucket of a chart is chosen from the range (:func:`bucket_seconds`), so a chart has at
most about :data:`MAX_POINTS` points whatever range is picked.

A preset range ends at the next multiple of :func:`fresh_seconds` (10 s up to an hour, 1 minute up
to a day, 5 minutes beyond), not at the current second: every rerun within that bucket asks the
store the same question, which :mod:`monitor.webui.cache` answers once. What a page shows is at
most that old.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

__all__ = ["Filters", "RANGES", "RANGE_KEYS", "AUTO", "MAX_POINTS", "bucket_seconds", "fresh_seconds", "preset",
           "fitting_range", "Status"]

Status = Literal["all", "ok", "error"]

RANGES: dict[str, timedelta] = {
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(days=1),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
}
"""The sidebar's presets (plus a custom range)."""

RANGE_KEYS: dict[str, str] = {"15m": "Last 15 minutes", "1h": "Last hour", "6h": "Last 6 hours",
                              "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
"""``?range=`` in a page's URL: a link or a reload keeps the range."""

AUTO = "Auto (fits the data)"
"""The default range: the shortest preset that holds every event (ten minutes of demo data get a
15-minute axis, not a 24-hour one with a dot at its right edge)."""

MAX_POINTS = 180
_STEPS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def bucket_seconds(start: datetime, end: datetime, max_points: int = MAX_POINTS) -> int:
    """The smallest step from a fixed ladder (10 s ... 1 week) giving at most ``max_points`` buckets."""
    span = max(1.0, (end - start).total_seconds())
    for step in _STEPS:
        if span / step <= max_points:
            return step
    return _STEPS[-1]


@dataclass(frozen=True)
class Filters:
    """``[start, end)`` in UTC, optionally only some models, one status, a text search.

    ``status`` and ``search`` narrow the Requests page (and the Quality examples); the other
    pages aggregate every status (error rates need both).
    """

    start: datetime
    end: datetime
    models: tuple[str, ...] = ()
    status: Status = "all"
    search: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if t.tzinfo is None:
                raise ValueError("Filters times must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"empty time range {self.start} .. {self.end}")
        if self.status not in ("all", "ok", "error"):
            raise ValueError(f"status must be all, ok or error (got {self.status!r})")

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def step(self) -> int:
        return bucket_seconds(self.start, self.end)


def fresh_seconds(span: timedelta) -> int:
    """How stale a page over a range of ``span`` may be: 10 s up to an hour, 60 s up to a day,
    300 s beyond (a 7-day chart's bucket is an hour)."""
    if span <= timedelta(hours=1):
        return 10
    if span <= timedelta(days=1):
        return 60
    return 300


def fitting_range(first_event: datetime | None, now: datetime | None = None) -> str:
    """The shortest preset of :data:`RANGES` that reaches back to ``first_event`` (the last one
    when the data is older than every preset; ``Last 24 hours`` when there is none)."""
    if first_event is None:
        return "Last 24 hours"
    now = now or datetime.now(timezone.utc)
    age = now - first_event
    for name, span in RANGES.items():
        if age <= span:
            return name
    return list(RANGES)[-1]


def preset(name: str, now: datetime | None = None, **kw: Any) -> Filters:
    """Filters for one of :data:`RANGES` ending at the first multiple of :func:`fresh_seconds` of it
    after ``now`` (UTC): the newest request is inside, and every rerun within the bucket gets the
    same range."""
    span = RANGES[name]
    step = fresh_seconds(span)
    t = (now or datetime.now(timezone.utc)).timestamp()
    end = datetime.fromtimestamp((t // step + 1) * step, timezone.utc)
    return Filters(start=end - span, end=end, **kw)
