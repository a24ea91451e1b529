"""Current windows, references (pinned baselines or trailing windows) and the scopes to check."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from monitor.checks.base import Scope, Window
from monitor.errors import ConfigError

__all__ = ["parse_duration", "current_window", "reference_window", "pin_baseline", "list_baselines", "scopes",
           "group_key"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"1d"``, ``"2w"`` (or plain seconds) as a timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m:
        raise ConfigError(f"cannot read the duration {text!r}: use e.g. 30m, 1h, 1d")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "s"])


def current_window(duration: str | timedelta, end: datetime | None = None) -> Window:
    span = parse_duration(duration) if isinstance(duration, str) else duration
    end = end or datetime.now(timezone.utc)
    return Window(end - span, end, "current")


def group_key(scope: Scope) -> str:
    return scope.label()


def reference_window(store, scope: Scope, current: Window, kind: str) -> tuple[Window, str]:
    """The reference for ``current``: ``(window, kind used)``.

    ``baseline`` is the pinned window of this model (and group, else of the model); ``day`` /
    ``week`` are the same span one day / week earlier; ``auto`` prefers the pinned baseline.
    """
    if kind in ("baseline", "auto"):
        rows = store.query_rows(
            "SELECT start, end FROM baselines FINAL WHERE model = {m:String} AND group IN ({g:String}, '') "
            "ORDER BY group = {g:String} DESC LIMIT 1", {"m": scope.model, "g": group_key(scope)})
        if rows:
            start, end = (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t for t in rows[0])
            return Window(start, end, "baseline"), "baseline"
        if kind == "baseline":
            raise ConfigError(f"no baseline is pinned for model {scope.model!r}: "
                              "run `monitor baseline pin --model M --from T1 --to T2` or use --reference day")
    shift = timedelta(days=7) if kind == "week" else timedelta(days=1)
    return Window(current.start - shift, current.end - shift, "week" if kind == "week" else "day"), \
        "week" if kind == "week" else "day"


def pin_baseline(store, model: str, start: datetime, end: datetime, group: str = "", note: str = "") -> None:
    """Pin ``[start, end)`` as the reference of ``model`` (and ``group``); replaces an earlier pin."""
    Window(start, end)  # validates
    store.insert("baselines", [[model, group, start, end, note]], ("model", "group", "start", "end", "note"))


def list_baselines(store) -> list[dict]:
    """Every pinned baseline, by model and group: ``model``, ``group``, ``from``, ``to``, ``pinned_at``, ``note``
    (the times as the store hands them back)."""
    rows = store.query_rows(
        "SELECT model, group, start, end, pinned_at, note FROM baselines FINAL ORDER BY model, group")
    return [dict(zip(("model", "group", "from", "to", "pinned_at", "note"), r)) for r in rows]


def scopes(store, current: Window, group_by: list[str], model: str | None = None) -> list[Scope]:
    """Every model (or just ``model``) with events in ``current``, and its values of ``group_by``."""
    params = {"s": current.start, "e": current.end}
    where = "timestamp >= {s:DateTime64(9, 'UTC')} AND timestamp < {e:DateTime64(9, 'UTC')}"
    if model:
        where += " AND model = {m:String}"
        params["m"] = model
    models = [r[0] for r in store.query_rows(f"SELECT DISTINCT model FROM inference_events WHERE {where} "
                                             "ORDER BY model", params)]
    out = [Scope(m) for m in models]
    for attr in group_by:
        p = dict(params, a=attr)
        for m, value in store.query_rows(
                f"SELECT model, attributes[{{a:String}}] AS v FROM inference_events WHERE {where} "
                "AND mapContains(attributes, {a:String}) GROUP BY model, v ORDER BY model, v", p):
            out.append(Scope(m, ((attr, value),)))
    return out
