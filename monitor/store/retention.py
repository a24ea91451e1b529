"""Retention per table and per model, as ClickHouse TTLs, applied at start (README "Records governance").

Every table with a TTL keeps it in the form the schema files give it, ``<time> + toIntervalDay(N)``.
With per-model days (``retention.models``) ``N`` becomes ``multiIf(model = 'a', 90, ..., 30)``:
``model`` in ``inference_events``, ``SpanAttributes['gen_ai.request.model']`` in ``otel_traces``
(only where the model's days are fewer than the spans' own: a model's spans are never kept longer
than spans are).

At start (:func:`apply_retention`, called by :func:`monitor.store.migrate.migrate`) each table's
TTL is compared with what the settings ask for, both as ClickHouse formats them, and a table that
differs is altered:

1. ``materialize_ttl_recalculate_only = 1`` (once per table): materialising a new TTL then only
   recomputes each part's TTL bounds from the time (and model) columns; no other column is
   rewritten, and nothing waits for it (``mutations_sync = 0``: a background mutation).
2. ``MODIFY TTL``: from then on, a part whose rows are all past their TTL is dropped whole, and
   where per-model days apply (``ttl_only_drop_parts = 0`` on that table) TTL merges also remove
   the expired rows of a part that still holds younger ones. Without per-model days a table keeps
   ``ttl_only_drop_parts = 1`` (whole days go at once; no rewrite).

A shorter retention therefore also reaches rows written before the change (the old parts' TTL
bounds are recomputed), not only new ones. ``OPTIMIZE TABLE ... FINAL`` removes expired rows at
once (the tests use it).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from monitor.errors import ConfigError, StoreError
from monitor.store.client import Store

__all__ = ["TablePolicy", "policies", "ttl_expression", "apply_retention", "describe", "AUDIT_TABLE",
           "MODEL_COLUMN"]

log = logging.getLogger("monitor.store")

AUDIT_TABLE = "audit_log"
FOLLOWS = {"otel_traces_trace_id_ts": "otel_traces", "check_distributions": "check_results",
           "embedding_cache": "inference_events", "inference_events_1m": "inference_events",
           "inference_events_10m": "inference_events"}
"""Companion tables keep their table's days unless ``retention.tables`` names them itself."""
MODEL_COLUMN = {"inference_events": "model", "inference_events_1m": "model", "inference_events_10m": "model",
                "otel_traces": "SpanAttributes['gen_ai.request.model']"}
"""Where a table's rows name their model, for per-model days."""
_SHORTER_ONLY = {"otel_traces"}
"""Tables where a model's days only apply when fewer than the table's (raw spans are never kept
longer than spans are; inference_events carries what an audit needs)."""

_TTL = re.compile(r"\bTTL\s+(.+?)(?:\s+SETTINGS\s+|$)", re.S)
_TIME = re.compile(r"^(.+?)\s*\+\s*toIntervalDay\(", re.S)
_SETTING = "{name}\\s*=\\s*(\\d+)"


@dataclass(frozen=True)
class TablePolicy:
    """``days`` for the table's rows; ``by_model``: ``(model, days)`` branches over ``column``."""

    days: int
    by_model: tuple[tuple[str, int], ...] = ()
    column: str = ""

    def days_expr(self) -> str:
        if not self.by_model:
            return str(int(self.days))
        arms = ", ".join(f"{self.column} = {sql_string(m)}, {int(d)}" for m, d in self.by_model)
        return f"multiIf({arms}, {int(self.days)})"

    def text(self) -> str:
        """For the log: ``30 days`` or ``30 days (llama-3-70b 180)``."""
        if not self.by_model:
            return f"{self.days} days"
        return f"{self.days} days ({', '.join(f'{m} {d}' for m, d in self.by_model)})"


def sql_string(value: str) -> str:
    """A ClickHouse string literal (backslash escapes, as ClickHouse itself formats them)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ttl_expression(time_expr: str, policy: TablePolicy) -> str:
    return f"{time_expr} + toIntervalDay({policy.days_expr()})"


def policies(tables: list[str], default_days: int, retention: Any) -> dict[str, TablePolicy]:
    """The policy of each of ``tables`` (those with a TTL) from ``store.retention_days`` and the
    ``retention`` settings. Raises :class:`ConfigError` when ``retention.tables`` names no table."""
    named: dict[str, int] = {}
    table_cfg = dict(getattr(retention, "tables", {}) or {})
    for pattern, days in table_cfg.items():
        hits = [t for t in tables if t == pattern or fnmatch.fnmatchcase(t, pattern)]
        if not hits:
            raise ConfigError(f"retention.tables names {pattern!r}, which matches no table with a TTL; "
                              f"tables: {', '.join(sorted(tables))}")
        for t in hits:  # an exact name wins over a glob, whatever the order
            if t == pattern or t not in table_cfg:
                named[t] = int(days)
    audit_days = int(getattr(retention, "audit_days", default_days))
    models = dict(getattr(retention, "models", {}) or {})

    def days_of(t: str) -> int:
        if t in named:
            return named[t]
        if t == AUDIT_TABLE:
            return audit_days
        if t in FOLLOWS and FOLLOWS[t] in tables:
            return days_of(FOLLOWS[t])
        return int(default_days)

    out = {}
    for t in tables:
        days = days_of(t)
        arms: tuple[tuple[str, int], ...] = ()
        if t in MODEL_COLUMN and models:
            arms = tuple(sorted((m, int(d)) for m, d in models.items()
                                if int(d) != days and (t not in _SHORTER_ONLY or int(d) < days)))
        out[t] = TablePolicy(days, arms, MODEL_COLUMN.get(t, "") if arms else "")
    return out


def describe(default_days: int, retention: Any) -> str:
    """One line for the start log: ``30 days (otel_traces 7, audit_log 365; models: llama 180)``."""
    parts = [f"{t} {d}" for t, d in sorted((getattr(retention, "tables", {}) or {}).items())]
    if "audit_log" not in (getattr(retention, "tables", {}) or {}):
        parts.append(f"audit_log {getattr(retention, 'audit_days', default_days)}")
    models = getattr(retention, "models", {}) or {}
    text = f"{default_days} days ({', '.join(parts)}"
    if models:
        text += "; models: " + ", ".join(f"{m} {d}" for m, d in sorted(models.items()))
    return text + ")"


@dataclass
class _Table:
    name: str
    engine_full: str
    ttl: str
    time_expr: str
    settings: dict[str, int] = field(default_factory=dict)


def _ttl_tables(store: Store) -> list[_Table]:
    rows = store.query_rows(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree' "
        "ORDER BY name", {"db": store.database})
    out = []
    for name, engine_full in rows:
        m = _TTL.search(engine_full)
        if m is None:
            continue
        ttl = m.group(1).strip()
        t = _TIME.match(ttl)
        if t is None:  # a TTL not of our form (moved to a volume, GROUP BY...): not ours to change
            log.warning("table %s has a TTL the monitor does not manage (%s); its retention is left as it is",
                        name, ttl[:200])
            continue
        settings = {}
        for key in ("ttl_only_drop_parts", "materialize_ttl_recalculate_only"):
            s = re.search(_SETTING.format(name=key), engine_full)
            if s:
                settings[key] = int(s.group(1))
        out.append(_Table(name, engine_full, ttl, t.group(1).strip(), settings))
    return out


def _formatter(store: Store):
    """Expressions as ClickHouse formats them (``formatQuerySingleLine``), so that equal TTLs compare
    equal however they were spelled; plain whitespace normalisation where the server lacks it."""
    cache: dict[str, str] = {}

    def fmt(expr: str) -> str:
        if expr not in cache:
            try:
                cache[expr] = store.query_rows("SELECT formatQuerySingleLine({q:String})",
                                               {"q": f"SELECT {expr}"})[0][0]
            except StoreError:
                cache[expr] = re.sub(r"\s+", " ", expr.strip())
        return cache[expr]
    return fmt


def apply_retention(store: Store, default_days: int, retention: Any = None) -> list[str]:
    """Alter every table whose TTL differs from its policy; returns the tables altered (each logged)."""
    tables = _ttl_tables(store)
    wanted = policies([t.name for t in tables], default_days, retention)
    fmt = _formatter(store)
    db = store.database
    changed = []
    for t in tables:
        policy = wanted[t.name]
        expr = ttl_expression(t.time_expr, policy)
        row_level = bool(policy.by_model)
        drop_parts = t.settings.get("ttl_only_drop_parts")
        if t.name in MODEL_COLUMN and drop_parts is not None and drop_parts != (0 if row_level else 1):
            store.command(f"ALTER TABLE `{db}`.`{t.name}` MODIFY SETTING ttl_only_drop_parts = {0 if row_level else 1}")
        if fmt(expr) == fmt(t.ttl):
            continue
        if t.settings.get("materialize_ttl_recalculate_only") != 1:
            store.command(f"ALTER TABLE `{db}`.`{t.name}` MODIFY SETTING materialize_ttl_recalculate_only = 1")
        store.command(f"ALTER TABLE `{db}`.`{t.name}` MODIFY TTL {expr}",
                      settings={"materialize_ttl_after_modify": 1, "mutations_sync": 0})
        log.info("retention of %s changed from %s to %s", t.name, _days_text(t.ttl), policy.text())
        changed.append(t.name)
    return changed


def _days_text(ttl: str) -> str:
    m = re.search(r"toIntervalDay\((\d+)\)\s*$", ttl)
    return f"{m.group(1)} days" if m else "per-model days"
