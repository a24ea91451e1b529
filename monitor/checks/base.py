"""What every check gets and returns.

A check compares a *current* window of one model's (and optionally one
group's) ``inference_events`` with a *reference* window, and returns
:class:`Result` rows. It never loads a whole window: it asks ClickHouse for
aggregates (counts, bins, quantiles) or for a deterministic sample
(:meth:`CheckContext.sample_filter`), through the parameterised filters of
:class:`CheckContext`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Protocol

from monitor.errors import Cancelled

if TYPE_CHECKING:
    from monitor.config import ChecksSettings

__all__ = ["Status", "Window", "Scope", "Result", "CheckContext", "Check", "worst"]

Status = Literal["ok", "warn", "fail", "insufficient_data"]
_ORDER = {"insufficient_data": 0, "ok": 1, "warn": 2, "fail": 3}


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_ORDER.__getitem__) if statuses else "ok"


@dataclass(frozen=True)
class Window:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime
    label: str = ""

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if t.tzinfo is None:
                raise ValueError("Window times must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError(f"empty window {self.start} .. {self.end}")

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def iso(self) -> str:
        return f"{self.start.astimezone(timezone.utc).isoformat()}/{self.end.astimezone(timezone.utc).isoformat()}"


@dataclass(frozen=True)
class Scope:
    """One model, optionally narrowed to one value of each grouping attribute (route, tenant...)."""

    model: str
    group: tuple[tuple[str, str], ...] = ()

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.group)


@dataclass
class Result:
    check: str
    """E.g. ``feature_drift``, ``semantic_drift``, ``quality``, ``slo``."""
    metric: str
    """What was measured: the feature, the quality signal, the SLO (``latency_ms.p95``)."""
    status: Status
    value: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    method: str = ""
    """The statistical test or rule (``ks``, ``wasserstein``, ``jensenshannon``, ``mmd``, ``z``...)."""
    reference_value: float | None = None
    current_n: int = 0
    reference_n: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    """Explanation for people and dashboards (bins, clusters with examples, thresholds...)."""


@dataclass
class CheckContext:
    """The store and the two windows of one (scope, current, reference) comparison."""

    store: Any
    """A :class:`monitor.store.client.Store`."""
    scope: Scope
    current: Window
    reference: Window
    settings: ChecksSettings
    """The ``checks`` section of the settings."""
    table: str = "inference_events"
    cancel: threading.Event | None = None
    """Set when the process stops: long steps call :meth:`check_cancelled` between units of work."""

    def check_cancelled(self) -> None:
        """Raise :class:`~monitor.errors.Cancelled` once the run was asked to stop."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the check run was stopped")

    def where(self, which: Literal["current", "reference"], prefix: str = "") -> tuple[str, dict[str, Any]]:
        """A parameterised ``WHERE`` body selecting the scope in one window, and its parameters.

        Parameter names are prefixed with ``prefix`` so both windows can appear in one query.
        Never format user values into SQL: use these parameters.
        """
        w = self.current if which == "current" else self.reference
        p = f"{prefix}{which[0]}_"
        params: dict[str, Any] = {f"{p}model": self.scope.model, f"{p}start": w.start, f"{p}end": w.end}
        sql = [f"model = {{{p}model:String}}", f"timestamp >= {{{p}start:DateTime64(9, 'UTC')}}",
               f"timestamp < {{{p}end:DateTime64(9, 'UTC')}}"]
        for i, (k, v) in enumerate(self.scope.group):
            params[f"{p}gk{i}"], params[f"{p}gv{i}"] = k, v
            sql.append(f"attributes[{{{p}gk{i}:String}}] = {{{p}gv{i}:String}}")
        return " AND ".join(sql), params

    @staticmethod
    def sample_filter(limit_fraction: float) -> str:
        """A deterministic sample condition (by hash of the span id): the same rows every time."""
        keep = max(0, min(1 << 32, int(limit_fraction * (1 << 32))))
        return f"(cityHash64(span_id) % 4294967296) < {keep}"


class Check(Protocol):
    name: str

    def run(self, ctx: CheckContext) -> list[Result]:
        """Compare ``ctx.current`` with ``ctx.reference``; ``insufficient_data`` below minimum sizes."""
        ...

    # Optional: ``warm_up(self) -> None`` loads what ``run`` needs (heavy imports, models) ahead of
    # time. Importing torch holds the GIL for up to ~0.75 s in one stretch: in a process that also
    # proxies requests that must happen before the proxy serves, not in the middle of a check run.
