"""Erase one person's rows from every table (``monitor erase --user ID | --client HASH | --conversation ID``).

A person's rows are the rows that carry the identity, and every row of a trace one of them belongs
to (the engine's own span and ``inference_events`` row of a proxied request carry no user id, but
share its trace):

====================================  =========================================================================
table                                 rows erased
====================================  =========================================================================
``inference_events``                  identity columns (``user_id``; ``client_key_hash`` / ``client_id``;
                                      ``conversation_id``, where schema 0014 added them) or identity
                                      attributes, or the trace
``otel_traces``                       identity in ``SpanAttributes`` / ``ResourceAttributes``, or the trace
``otel_traces_trace_id_ts``           the trace (its start/end lookup row)
``otel_logs``                         identity in ``LogAttributes`` / ``ResourceAttributes``, or the trace
``otel_metrics_*``                    identity in ``Attributes`` / ``ResourceAttributes`` (per-user series).
                                      Other points are aggregates over many requests and stay; an
                                      exemplar holds a trace id and one value, and points at nothing
                                      once the trace is gone
``embedding_cache``                   embeddings of the erased prompts and completions (by text hash)
``dead_letters``                      set-aside messages whose bytes contain the identity (they would
                                      otherwise be replayable)
``check_results``                     kept (aggregates), but example texts of the erased requests
                                      are taken out of their details (quality examples by trace id,
                                      semantic-drift examples by text); the row is rewritten
====================================  =========================================================================

Kept on purpose: ``check_distributions`` (shares per bucket), alerts (scalars only), baselines, and
``audit_log`` (the record of who accessed what; the erasure itself is logged there as the identity's
SHA-256). Not reached: data not yet stored (the spool, Kafka): rows that arrive after an erasure
are not erased -- run it again once ingest has caught up (the answer says how much was pending,
where it knows). Backups and detached parts are outside the monitor.

Rows go with lightweight ``DELETE`` (MergeTree marks them deleted at once; queries stop seeing them
immediately, the bytes go at the part's next merge), falling back to an ``ALTER TABLE ... DELETE``
mutation waited for (``mutations_sync = 2``) where a table does not take it. A ``Distributed`` table
(cluster DDL) is erased through its ``_local`` table ``ON CLUSTER``. Counts are taken before
(``matched``) and after (``left``, 0 unless rows arrived meanwhile); ``dry_run`` only counts.
The trace ids are collected once, first, so the order of deletion cannot lose one.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

from monitor.errors import ConfigError, StoreError
from monitor.store.retention import sql_string

__all__ = ["KINDS", "IDENTITIES", "Identity", "TableCount", "EraseResult", "erase"]

log = logging.getLogger("monitor.audit")


@dataclass(frozen=True)
class Identity:
    columns: tuple[str, ...]
    """``inference_events`` columns that hold it (used where they exist)."""
    attributes: tuple[str, ...]
    """Attribute keys that hold it, in spans, events, logs and metric points."""


# The names monitor.otlp.identity gives (and OTel semantic conventions use): kept here as data so
# that erasure does not depend on how ingest derives them.
IDENTITIES: dict[str, Identity] = {
    "user": Identity(("user_id",), ("enduser.id", "user.id")),
    "client": Identity(("client_key_hash", "client_id"), ("monitor.client.key_hash", "monitor.client.address_hash")),
    "conversation": Identity(("conversation_id",), ("gen_ai.conversation.id", "session.id")),
}
KINDS = tuple(IDENTITIES)
METRIC_TABLES = ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
                 "otel_metrics_exponential_histogram", "otel_metrics_summary")
EXAMPLE_CHARS = 300
"""Semantic-drift examples are texts cut at this many characters (last one an ellipsis)."""
_TEXT_BATCH = 2000
"""Traces whose texts are read at once (bounds the memory an erasure of a heavy user takes)."""
_DISTRIBUTED = re.compile(r"^Distributed\(\s*'?([^',]+)'?\s*,\s*'?([^',]+)'?\s*,\s*'?([^',)]+)'?")


@dataclass
class TableCount:
    table: str
    matched: int
    left: int | None = None
    """Rows still matching afterwards (None in a dry run)."""
    how: str = "delete"
    """``delete`` (lightweight), ``mutation``, ``rewrite`` (examples taken out), ``none``."""


@dataclass
class EraseResult:
    kind: str
    target: str
    """The identity's SHA-256 (what the audit log keeps)."""
    dry_run: bool
    traces: int
    tables: list[TableCount] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        return {t.table: t.matched for t in self.tables}


class _Plan:
    def __init__(self, store: Any, kind: str, value: str, batch: int | None):
        if kind not in IDENTITIES:
            raise ConfigError(f"erase needs one of {', '.join(KINDS)}, not {kind!r}")
        if not value or not value.strip():
            raise ConfigError(f"the {kind} to erase is empty")
        self.store = store
        self.db = store.database
        self.ident = IDENTITIES[kind]
        self.params: dict[str, Any] = {"id": value}
        self.value = value
        # chdb takes any parameter size; an HTTP server's URI limit (1 MiB) bounds an IN list
        self.batch = batch or (1_000_000 if store.embedded else 5000)
        rows = store.query_rows("SELECT name, engine, engine_full FROM system.tables WHERE database = {db:String}",
                                {"db": self.db})
        self.tables = {n: (e, full) for n, e, full in rows}
        self.columns = {c for (c,) in store.query_rows(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'inference_events'",
            {"db": self.db})}

    def attr(self, *maps: str) -> str:
        return " OR ".join(f"{m}[{sql_string(k)}] = {{id:String}}" for m in maps for k in self.ident.attributes)

    def events_cond(self) -> str:
        cols = [f"`{c}` = {{id:String}}" for c in self.ident.columns if c in self.columns]
        return " OR ".join(cols + [self.attr("attributes")])

    def has(self, table: str) -> bool:
        return table in self.tables

    def target(self, table: str) -> str:
        """Where a DELETE goes: the table, or the local table ON CLUSTER behind a Distributed one."""
        engine, full = self.tables[table]
        if engine == "Distributed":
            m = _DISTRIBUTED.match(full)
            if m:
                cluster, database, local = (x.strip().strip("'`") for x in m.groups())
                return f"`{database}`.`{local}` ON CLUSTER {sql_string(cluster)}"
        return f"`{self.db}`.`{table}`"


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def erase(store: Any, kind: str, value: str, dry_run: bool = False, batch: int | None = None) -> EraseResult:
    """Count (and unless ``dry_run``, delete) the person's rows in every table; see the module docstring."""
    from monitor.governance.audit import identity_digest

    t0 = time.monotonic()
    plan = _Plan(store, kind, value, batch)
    traces = _traces(plan)
    out = EraseResult(kind, identity_digest(kind, value), dry_run, len(traces))
    batches = list(_chunks(traces, plan.batch)) or [[]]

    # (table, attribute condition or None, trace column or None), deleted in this order: the
    # anchors (spans, events) last, so a run cut short finds the rest again
    specs: list[tuple[str, str | None, str | None]] = [("otel_logs", plan.attr("LogAttributes", "ResourceAttributes"),
                                                        "TraceId")]
    specs += [(t, plan.attr("Attributes", "ResourceAttributes"), None) for t in METRIC_TABLES]
    specs += [("otel_traces_trace_id_ts", None, "TraceId"),
              ("otel_traces", plan.attr("SpanAttributes", "ResourceAttributes"), "TraceId"),
              ("inference_events", plan.events_cond(), "trace_id")]
    specs = [s for s in specs if plan.has(s[0])]

    texts = _TextMatcher()
    if plan.has("inference_events"):
        _collect_texts(plan, traces, texts)

    steps: list[tuple[TableCount, Any]] = []
    if plan.has("embedding_cache") and texts.hashes:
        hashes = sorted(texts.hashes)
        n = sum(int(store.query_rows(
            "SELECT count() FROM embedding_cache WHERE text_hash IN {h:Array(FixedString(16))}", {"h": b})[0][0])
            for b in _chunks(hashes, 1000))
        tc = TableCount("embedding_cache", n)
        steps.append((tc, lambda tc=tc, hashes=hashes: _delete_hashes(plan, tc, hashes)))
    if plan.has("dead_letters"):
        n = int(store.query_rows("SELECT count() FROM dead_letters WHERE position(payload, {id:String}) > 0",
                                 plan.params)[0][0])
        tc = TableCount("dead_letters", n)
        steps.append((tc, lambda tc=tc: _delete(plan, tc, [("position(payload, {id:String}) > 0", plan.params)])))
    if plan.has("check_results"):
        rewritten, columns = _scrub_checks(plan, set(traces), texts)
        tc = TableCount("check_results", len(rewritten), how="rewrite")
        steps.append((tc, lambda tc=tc: _rewrite_checks(plan, tc, rewritten, columns)))
    for table, cond, tcol in specs:
        conds = list(_conditions(cond, tcol, batches, plan.params))
        n = sum(int(store.query_rows(f"SELECT count() FROM {table} WHERE {w}", p)[0][0]) for w, p in conds)
        tc = TableCount(table, n)
        steps.append((tc, lambda tc=tc, conds=conds: _delete(plan, tc, conds)))

    for tc, run in steps:
        out.tables.append(tc)
        if dry_run or tc.matched == 0:
            tc.how = "none" if tc.matched == 0 and not dry_run else tc.how
            tc.left = None if dry_run else 0
            continue
        run()
    out.seconds = round(time.monotonic() - t0, 3)
    if not dry_run:
        log.info("erased %s: %s in %.1fs", out.target,
                 ", ".join(f"{t.table} {t.matched}" for t in out.tables if t.matched) or "nothing matched",
                 out.seconds)
    return out


def _traces(plan: _Plan) -> list[str]:
    """Every trace id a row carrying the identity belongs to."""
    sources = []
    if plan.has("inference_events"):
        sources.append(f"SELECT trace_id AS t FROM inference_events WHERE ({plan.events_cond()}) AND trace_id != ''")
    if plan.has("otel_traces"):
        sources.append("SELECT TraceId AS t FROM otel_traces WHERE "
                       f"({plan.attr('SpanAttributes', 'ResourceAttributes')}) AND TraceId != ''")
    if plan.has("otel_logs"):
        sources.append("SELECT TraceId AS t FROM otel_logs WHERE "
                       f"({plan.attr('LogAttributes', 'ResourceAttributes')}) AND TraceId != ''")
    if not sources:
        return []
    rows = plan.store.query_rows(f"SELECT DISTINCT t FROM ({' UNION ALL '.join(sources)}) ORDER BY t", plan.params)
    return [r[0] for r in rows]


def _collect_texts(plan: _Plan, traces: list[str], texts: "_TextMatcher") -> None:
    """The erased requests' prompts and completions, a few thousand traces at a time (cut where the
    embedding cache cuts them: nothing past it changes a key)."""
    from monitor.checks.embeddings import MAX_TEXT_CHARS

    cols = f"leftUTF8(prompt, {MAX_TEXT_CHARS}), leftUTF8(completion, {MAX_TEXT_CHARS})"
    queries = [(f"trace_id = '' AND ({plan.events_cond()})", plan.params)]
    queries += [("trace_id IN {traces:Array(String)}", {"traces": b}) for b in _chunks(traces, _TEXT_BATCH)]
    for where, p in queries:
        for prompt, completion in plan.store.query_rows(f"SELECT {cols} FROM inference_events WHERE {where}", p):
            texts.add(prompt)
            texts.add(completion)


def _conditions(cond: str | None, tcol: str | None, batches: list[list[str]],
                params: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Disjoint WHERE clauses covering ``cond OR tcol IN traces``: the attribute condition with the
    first batch of trace ids, then ``NOT cond AND tcol IN batch`` for the others (so that counts
    add up and nothing is deleted twice)."""
    for i, b in enumerate(batches):
        parts = []
        if tcol is not None and b:
            parts.append(f"{tcol} IN {{traces:Array(String)}}")
        if cond and i == 0:
            parts.append(cond)
            where = " OR ".join(f"({x})" for x in parts)
        elif cond:
            if not parts:
                continue
            where = f"NOT ({cond}) AND {parts[0]}"
        else:
            if not parts:
                continue
            where = parts[0]
        yield where, ({**params, "traces": b} if tcol is not None and b else dict(params))


def _delete(plan: _Plan, tc: TableCount, conds: Iterable[tuple[str, dict[str, Any]]]) -> None:
    target = plan.target(tc.table)
    conds = list(conds)
    for where, p in conds:
        try:
            plan.store.command(f"DELETE FROM {target} WHERE {where}", p)
        except StoreError as exc:
            log.info("lightweight DELETE refused on %s (%s); deleting with a mutation", tc.table, exc)
            plan.store.command(f"ALTER TABLE {target} DELETE WHERE {where}", p, settings={"mutations_sync": 2})
            tc.how = "mutation"
    tc.left = sum(int(plan.store.query_rows(f"SELECT count() FROM {tc.table} WHERE {w}", p)[0][0]) for w, p in conds)


def _delete_hashes(plan: _Plan, tc: TableCount, hashes: list[bytes]) -> None:
    _delete(plan, tc, [("text_hash IN {h:Array(FixedString(16))}", {"h": b}) for b in _chunks(hashes, 1000)])


class _TextMatcher:
    """The erased prompts and completions, as their embedding-cache keys and as the forms a
    semantic-drift example takes (the text, or its first 299 characters and an ellipsis)."""

    def __init__(self) -> None:
        from monitor.checks.embeddings import text_hash

        self._hash = text_hash
        self.hashes: set[bytes] = set()
        self.examples: set[bytes] = set()

    def add(self, text: str | None) -> None:
        if not text:
            return
        self.hashes.add(self._hash(text))
        self.examples.add(self._hash(text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"))

    def matches(self, example: str) -> bool:
        return bool(example) and self._hash(example) in self.examples


def _scrub(node: Any, traces: set[str], texts: _TextMatcher) -> int:
    """Take erased examples out of a check's details, in place; returns how many."""
    removed = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "examples" and isinstance(value, list):
                keep = []
                for ex in value:
                    if isinstance(ex, str) and texts.matches(ex):
                        removed += 1
                    elif isinstance(ex, dict) and (ex.get("trace_id") in traces or texts.matches(ex.get("prompt") or "")
                                                   or texts.matches(ex.get("completion") or "")):
                        removed += 1
                    else:
                        keep.append(ex)
                node[key] = keep
            else:
                removed += _scrub(value, traces, texts)
    elif isinstance(node, list):
        for item in node:
            removed += _scrub(item, traces, texts)
    return removed


def _scrub_checks(plan: _Plan, traces: set[str], texts: _TextMatcher) -> tuple[list[list[Any]], list[str]]:
    """Check results whose examples quote an erased request, with those examples taken out."""
    columns = [c for (c,) in plan.store.query_rows(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'check_results' "
        "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position", {"db": plan.db})]
    i = columns.index("details")
    out = []
    for row in plan.store.query_rows(f"SELECT {', '.join(f'`{c}`' for c in columns)} FROM check_results "
                                     "WHERE position(details, '\"examples\"') > 0"):
        try:
            details = json.loads(row[i] or "{}")
        except ValueError:
            continue
        n = _scrub(details, traces, texts)
        if n:
            details["erased_examples"] = int(details.get("erased_examples", 0)) + n
            row = list(row)
            row[i] = json.dumps(details, default=str, ensure_ascii=False)
            out.append(row)
    return out, columns


def _rewrite_checks(plan: _Plan, tc: TableCount, rows: list[list[Any]], columns: list[str]) -> None:
    """Delete each affected result and write it back without the examples."""
    key = ("run_id", "check", "model", "group", "metric")
    idx = [columns.index(k) for k in key]
    where = " AND ".join(f"`{k}` = {{k{j}:String}}" for j, k in enumerate(key))
    conds = [(where, {f"k{j}": row[i] for j, i in enumerate(idx)}) for row in rows]
    _delete(plan, tc, conds)
    plan.store.insert("check_results", rows, columns)
    tc.left = 0
