"""The cluster DDL (``deploy/clickhouse/cluster/``), generated from the single-node schema files.

``schemas/clickhouse/NNNN_*.sql`` is what :mod:`monitor.store.migrate` applies to one ClickHouse
node (or chdb). A sharded, replicated cluster needs the same tables in another shape, applied by
hand before the monitor first connects; this module writes that shape, one file per schema file,
so the two never drift apart (``tests/test_deploy_clickhouse.py`` checks that the files on disk
are what it writes, and that ClickHouse builds identical local tables from both)::

    python -m monitor.store.cluster_ddl            # rewrite deploy/clickhouse/cluster/NNNN_*.sql
    python -m monitor.store.cluster_ddl --check    # exit 1 when a file differs from what it would write

Each statement of a schema file becomes:

- ``CREATE TABLE T (...) ENGINE = XMergeTree(args)``: ``T_local`` ``ON CLUSTER '{cluster}'`` with
  ``ReplicatedXMergeTree('/clickhouse/tables/{shard}/{database}/T_local', '{replica}', args)``, the
  same columns, codecs, indexes, keys, TTL and settings less ``non_replicated_deduplication_window``
  (replicated tables deduplicate through Keeper), then ``T`` as a ``Distributed`` table over it,
  sharded by :data:`SHARDING_KEYS`;
- ``CREATE TABLE T2 AS T`` (T made earlier in the same file): T's form under T2's name (its own
  replica path, ``T2_local`` and ``T2``);
- ``CREATE MATERIALIZED VIEW ... TO X AS SELECT ... FROM Y``: on every node, from ``Y_local`` into
  ``X_local``, so it runs on the shard that stores the rows;
- ``ALTER TABLE T ADD|DROP|MODIFY COLUMN``: on ``T_local`` and on ``T`` (the Distributed table
  must know the columns too); other ``ALTER``\\ s (indexes, TTL, settings) on ``T_local`` only;
  ``MATERIALIZE INDEX`` (a mutation over every stored row) is written commented out, for the
  operator to run when it suits;
- the steps that fill a table from the rows already stored (``DROP VIEW``, ``TRUNCATE``,
  ``INSERT INTO``) are written commented out, for the operator to run on one replica of every shard,
  except a ``DROP VIEW`` of a view the file makes again into a table it does not create (the view
  is redefined, say with new columns): that one runs, on the cluster, so the new view replaces it.

Comments before a statement are kept. A new table without a sharding key stops the generator with
the line to add.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHARDING_KEYS", "generate", "generate_file", "cluster_dir", "main"]

SHARDING_KEYS: dict[str, tuple[str, str]] = {
    "otel_traces": ("cityHash64(TraceId)", "a trace's spans, its lookup row and its inference events on one shard"),
    "otel_traces_trace_id_ts": ("cityHash64(TraceId)", "beside the trace's spans"),
    "otel_metrics_gauge": ("cityHash64(ServiceName, MetricName, TimeUnix)",
                           "deterministic per point: a retried insert splits over the shards as the first try did"),
    "otel_metrics_sum": ("cityHash64(ServiceName, MetricName, TimeUnix)", "as otel_metrics_gauge"),
    "otel_metrics_histogram": ("cityHash64(ServiceName, MetricName, TimeUnix)", "as otel_metrics_gauge"),
    "otel_metrics_exponential_histogram": ("cityHash64(ServiceName, MetricName, TimeUnix)", "as otel_metrics_gauge"),
    "otel_metrics_summary": ("cityHash64(ServiceName, MetricName, TimeUnix)", "as otel_metrics_gauge"),
    "otel_logs": ("cityHash64(ServiceName, Timestamp)", "even and deterministic"),
    "inference_events": ("cityHash64(trace_id)", "a request's event and its spans on one shard"),
    "embedding_cache": ("cityHash64(text_hash)", "one text's embedding on one shard"),
    "check_results": ("cityHash64(model)", "a model's results together"),
    "inference_events_1m": ("cityHash64(model, minute)",
                           "written per shard by its view from that shard's inference_events_local; "
                           "readers merge every shard's states"),
    "inference_events_10m": ("cityHash64(model, minute)", "as inference_events_1m, from it"),
    "model_versions": ("cityHash64(model)", "a model's versions together (min/max merge per shard, the query merges shards)"),
    "check_distributions": ("cityHash64(model)", "beside the model's results"),
    "baselines": ("cityHash64(model)", "every version of a model's baseline on one shard, so FINAL collapses them"),
    "alert_events": ("cityHash64(alert_id)", "an alert's transitions on one shard"),
    "alert_outbox": ("cityHash64(notification_id)",
                     "every version of an outbox row on one shard, so FINAL collapses them"),
    "alert_deliveries": ("cityHash64(notification_id)", "beside the notification's outbox rows"),
    "alert_state": ("cityHash64(alert_id)", "every version of an alert's state on one shard, so FINAL collapses them"),
    "dead_letters": ("cityHash64(source)", "even enough, and deterministic"),
    "audit_log": ("cityHash64(actor, timestamp)", "even and deterministic"),
}
"""Per table: the ``Distributed`` sharding key and why it is that one."""

HEADER = """\
-- Generated from schemas/clickhouse/{name} by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).
"""

FIRST = """\
-- The database, on every node. Run this file first.
CREATE DATABASE IF NOT EXISTS $database ON CLUSTER '{cluster}';
"""

ON_CLUSTER = "ON CLUSTER '{cluster}'"
_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS \$database\.(\w+) \(", re.M)
_CREATE_AS = re.compile(r"^CREATE TABLE IF NOT EXISTS \$database\.(\w+) AS \$database\.(\w+)$")
_ENGINE = re.compile(r"ENGINE = (\w*)MergeTree(?:\(([^)]*)\))?")
_NON_REPLICATED = re.compile(r",\s*non_replicated_deduplication_window\s*=\s*\d+|"
                             r"non_replicated_deduplication_window\s*=\s*\d+\s*,\s*")
_VIEW = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS \$database\.(\w+)", re.M)
_VIEW_TO = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS \$database\.(\w+) TO \$database\.(\w+)")
_ALTER = re.compile(r"^ALTER TABLE \$database\.(\w+)", re.M)
_BOTH_KINDS = re.compile(r"^\s*(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.M | re.I)


@dataclass
class _Statement:
    comments: str
    sql: str


def _statements(text: str) -> list[_Statement]:
    """The statements of a schema file (ending with ``;`` at the end of a line), each with the comment
    lines just before it."""
    out: list[_Statement] = []
    comments: list[str] = []
    body: list[str] = []
    for line in text.splitlines():
        if not body and (line.startswith("--") or not line.strip()):
            if line.strip():
                comments.append(line)
            elif comments and not body:
                comments.append("")
            continue
        body.append(line)
        if line.rstrip().endswith(";"):
            out.append(_Statement("\n".join(comments).strip("\n"), "\n".join(body).rstrip()[:-1].rstrip()))
            comments, body = [], []
    if body:
        raise ValueError(f"statement without a closing ';': {body[0]}")
    return out


def _table(stmt: _Statement) -> str:
    m = _CREATE_TABLE.match(stmt.sql)
    assert m is not None
    name = m.group(1)
    if name not in SHARDING_KEYS:
        raise ValueError(f"table {name} has no sharding key: add it to SHARDING_KEYS in {__file__}")
    key, why = SHARDING_KEYS[name]
    local = name + "_local"
    sql = _CREATE_TABLE.sub(f"CREATE TABLE IF NOT EXISTS $database.{local} {ON_CLUSTER} (", stmt.sql, count=1)
    engine = _ENGINE.search(sql)
    if engine is None:
        raise ValueError(f"table {name}: no *MergeTree engine to replicate")
    args = [f"'/clickhouse/tables/{{shard}}/{{database}}/{local}'", "'{replica}'"]
    if engine.group(2):
        args.append(engine.group(2))
    sql = sql[:engine.start()] + f"ENGINE = Replicated{engine.group(1)}MergeTree({', '.join(args)})" + sql[engine.end():]
    sql = _NON_REPLICATED.sub("", sql)
    sql = re.sub(r"\n?SETTINGS\s*$", "", sql)
    dist = (f"-- Sharded by {key}: {why}.\n"
            f"CREATE TABLE IF NOT EXISTS $database.{name} {ON_CLUSTER}\n"
            f"AS $database.{local}\n"
            f"ENGINE = Distributed('{{cluster}}', $database, {local}, {key});\n")
    return _with_comments(stmt.comments, sql) + "\n" + dist


def _view(stmt: _Statement) -> str:
    m = _VIEW.match(stmt.sql)
    assert m is not None
    sql = stmt.sql[:m.end()] + f" {ON_CLUSTER}" + stmt.sql[m.end():]
    sql = re.sub(r"\bTO \$database\.(\w+)", r"TO $database.\1_local", sql)
    sql = re.sub(r"\bFROM \$database\.(\w+)", r"FROM $database.\1_local", sql)
    return _with_comments(stmt.comments, sql)


def _materialize(stmt: _Statement) -> bool:
    return bool(re.match(r"ALTER TABLE \$database\.\w+\s+MATERIALIZE\s+INDEX\b", stmt.sql.lstrip(), re.I))


_FILL = re.compile(r"^(DROP VIEW IF EXISTS|TRUNCATE TABLE|INSERT INTO) \$database\.(\w+)")


def _fill(stmt: _Statement, redefined: frozenset[str] = frozenset()) -> str:
    """A step of filling a table from the rows already stored, commented out: on each shard's local
    tables (a view keeps its name), to run on one replica of every shard, in the file's order. The
    drop of a view in ``redefined`` (made again by the file) runs, on the cluster."""
    kind = _FILL.match(stmt.sql.lstrip())
    assert kind is not None
    if kind.group(1) == "DROP VIEW IF EXISTS" and kind.group(2) in redefined:
        note = ("-- Made again below with the file's definition: requests stored between the drop and the\n"
                "-- new view are in no rollup until the fill below is run.\n")
        return _with_comments(stmt.comments, note + f"{stmt.sql.rstrip()} {ON_CLUSTER}")
    if kind.group(1) == "DROP VIEW IF EXISTS":
        sql = f"{stmt.sql.rstrip()} {ON_CLUSTER}"
    else:
        sql = re.sub(r"\$database\.(\w+)", r"$database.\1_local", stmt.sql)
    note = ("-- Filling it from the rows stored before: only where this shard already held rows when the\n"
            "-- file was applied; uncomment and run on one replica of every shard, in this order.\n"
            if kind.group(1) == "DROP VIEW IF EXISTS" else "")
    return _with_comments(stmt.comments, note + "\n".join("-- " + line for line in sql.splitlines()))


def _alter(stmt: _Statement, note: bool = True) -> str:
    m = _ALTER.match(stmt.sql)
    assert m is not None
    name, rest = m.group(1), stmt.sql[m.end():]
    rest = re.sub(r"\s*SETTINGS\s+mutations_sync\s*=\s*\d+\s*$", "", rest)
    local = f"ALTER TABLE $database.{name}_local {ON_CLUSTER}{rest}"
    if re.match(r"\s*MATERIALIZE\s+INDEX\b", rest, re.I):
        text = ("-- Mutations over every stored row: they index the rows already stored (parts written\n"
                "-- from now on are indexed anyway). Run them by hand when it suits you, e.g. off-peak.\n"
                if note else "")
        return _with_comments(stmt.comments, text + "-- " + local)
    out = _with_comments(stmt.comments, local)
    if _BOTH_KINDS.search(rest):
        out += f"\nALTER TABLE $database.{name} {ON_CLUSTER}{rest};\n"
    return out


def _with_comments(comments: str, sql: str) -> str:
    return (comments + "\n" if comments else "") + sql.rstrip().rstrip(";") + ";\n"


def generate(name: str, text: str, *, first: bool = False) -> str:
    """The cluster DDL for the schema file ``name`` with content ``text``."""
    parts = [HEADER.format(name=name)]
    if first:
        parts.append(FIRST)
    previous: _Statement | None = None
    created: dict[str, _Statement] = {}
    statements = _statements(text)
    made_here = {m.group(1) for s in statements if (m := _CREATE_TABLE.match(s.sql.lstrip()) or
                                                    _CREATE_AS.match(s.sql.lstrip()))}
    redefined = frozenset(m.group(1) for s in statements
                          if (m := _VIEW_TO.match(s.sql.lstrip())) and m.group(2) not in made_here)
    for stmt in statements:
        head = stmt.sql.lstrip()
        copy = _CREATE_AS.match(head)
        if copy:  # the same table under another name: its own replica path, local and Distributed table
            like = created.get(copy.group(2))
            if like is None:
                raise ValueError(f"{name}: {copy.group(1)} copies {copy.group(2)}, which this file does not create")
            stmt = _Statement(stmt.comments, _CREATE_TABLE.sub(
                f"CREATE TABLE IF NOT EXISTS $database.{copy.group(1)} (", like.sql.lstrip(), count=1))
            head = stmt.sql
        if previous is not None and _materialize(previous) and _materialize(stmt) and not stmt.comments:
            parts[-1] += _alter(stmt, note=False)  # a run of them under one note
            previous = stmt
            continue
        previous = stmt
        if _CREATE_TABLE.match(head):
            created[_CREATE_TABLE.match(head).group(1)] = stmt
            parts.append(_table(stmt))
        elif _VIEW.match(head):
            parts.append(_view(stmt))
        elif _ALTER.match(head):
            parts.append(_alter(stmt))
        elif _FILL.match(head):
            parts.append(_fill(stmt, redefined))
        else:
            raise ValueError(f"{name}: no cluster form for the statement {head.splitlines()[0]!r}")
    return "\n".join(parts)


def schema_dir() -> Path:
    from monitor.store.migrate import schema_dir as _schemas
    return _schemas()


def cluster_dir() -> Path:
    """``deploy/clickhouse/cluster`` of the checkout this package lives in."""
    return Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "cluster"


def generate_file(path: Path, first: bool) -> str:
    return generate(path.name, path.read_text(), first=first)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m monitor.store.cluster_ddl", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder to write (default deploy/clickhouse/cluster)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = ap.parse_args(argv)
    out = args.out or cluster_dir()
    files = sorted(p for p in schema_dir().iterdir() if re.match(r"\d{4}_.*\.sql$", p.name))
    stale = []
    for i, path in enumerate(files):
        text = generate_file(path, first=i == 0)
        target = out / path.name
        if target.is_file() and target.read_text() == text:
            continue
        stale.append(target)
        if not args.check:
            out.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    extra = [p for p in out.glob("[0-9][0-9][0-9][0-9]_*.sql") if p.name not in {f.name for f in files}]
    for p in extra:
        stale.append(p)
        if not args.check:
            p.unlink()
    verb = "differ from the schema (run python -m monitor.store.cluster_ddl)" if args.check else "written"
    for p in stale:
        print(f"{p}: {verb}", file=sys.stderr)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
