"""Exports of stored rows for audits (``monitor export``): Parquet or JSON lines, written by ClickHouse.

ClickHouse formats the rows itself and the monitor never holds them:

- on a ClickHouse server, the response (``FORMAT Parquet`` / ``JSONEachRow``) is streamed to the
  file as it arrives (clickhouse-connect ``raw_stream``), chunk by chunk;
- in chdb, the engine writes the file (``INSERT INTO FUNCTION file(path, format) SELECT ...``):
  clickhouse-connect would otherwise buffer a whole Parquet result in memory. While it writes,
  the process's one chdb handle is busy: ingest waits (its spool keeps what arrives) and pages
  wait, for about the export's duration (bench figures in README "Records governance").

Rows are ordered by time; times are UTC (Parquet: timestamps; JSON lines: ISO 8601 with ``Z``).
The file appears under its name only when complete (written as ``NAME.part``, then renamed).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError, StoreError
from monitor.store.client import Store

__all__ = ["EXPORT_TABLES", "FORMATS", "ExportResult", "export_query", "count_rows", "export_to_file"]

EXPORT_TABLES: dict[str, str] = {"inference_events": "timestamp", "otel_traces": "Timestamp",
                                 "otel_logs": "Timestamp", "audit_log": "timestamp"}
"""Tables an export may read, with their time column."""
FORMATS = {"parquet": "Parquet", "jsonl": "JSONEachRow"}
SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl"}
_TS = "DateTime64(9, 'UTC')"


@dataclass
class ExportResult:
    table: str
    format: str
    rows: int
    bytes: int
    seconds: float
    path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_query(table: str, start: datetime, end: datetime, model: str | None = None) -> tuple[str, dict[str, Any]]:
    """``SELECT *`` of ``table`` in ``[start, end)`` (of one model), by time, and its parameters.

    ``model`` on ``otel_traces`` / ``otel_logs``: the spans and logs of that model's traces (its
    requests in the range, plus spans naming it in ``gen_ai.request.model``)."""
    if table not in EXPORT_TABLES:
        raise ConfigError(f"cannot export {table!r}; tables: {', '.join(EXPORT_TABLES)}")
    if not end > start:
        raise ConfigError(f"the export's end ({end.isoformat()}) must be after its start ({start.isoformat()})")
    ts = EXPORT_TABLES[table]
    where = [f"{ts} >= {{start:{_TS}}}", f"{ts} < {{end:{_TS}}}"]
    params: dict[str, Any] = {"start": start, "end": end}
    if model:
        params["model"] = model
        traces = (f"SELECT trace_id FROM inference_events WHERE model = {{model:String}} "
                  f"AND timestamp >= {{start:{_TS}}} AND timestamp < {{end:{_TS}}}")
        if table == "inference_events":
            where.append("model = {model:String}")
        elif table == "otel_traces":
            where.append(f"(SpanAttributes['gen_ai.request.model'] = {{model:String}} OR TraceId IN ({traces}))")
        elif table == "otel_logs":
            where.append(f"TraceId IN ({traces})")
        else:
            raise ConfigError(f"--model does not apply to {table}")
    return f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY {ts}", params


def count_rows(store: Store, table: str, start: datetime, end: datetime, model: str | None = None) -> int:
    sql, params = export_query(table, start, end, model)
    sql = sql[:sql.rindex(" ORDER BY ")].replace("SELECT * FROM", "SELECT count() FROM", 1)
    return int(store.query_rows(sql, params)[0][0])


def export_to_file(store: Store, path: str | Path, table: str, start: datetime, end: datetime,
                   model: str | None = None, fmt: str = "parquet", rows: int | None = None) -> ExportResult:
    """Write the rows to ``path`` (absolute or relative to the cwd; replaced if it exists).
    ``rows``: their count when the caller took it already (it is reported, not checked)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    sql, params = export_query(table, start, end, model)
    path = Path(path).expanduser().resolve()
    part = path.with_name(path.name + ".part")
    t0 = time.monotonic()
    if rows is None:
        rows = count_rows(store, table, start, end, model)
    settings = {"date_time_output_format": "iso", "output_format_parquet_compression_method": "zstd"}
    try:
        if store.embedded:
            store.command(f"INSERT INTO FUNCTION file({{out_path:String}}, '{FORMATS[fmt]}') {sql} SETTINGS "
                          + ", ".join(f"{k} = '{v}'" for k, v in settings.items())
                          + ", engine_file_truncate_on_insert = 1", {**params, "out_path": str(part)})
        else:
            _stream(store, sql, params, FORMATS[fmt], settings, part)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return ExportResult(table, fmt, rows, path.stat().st_size, round(time.monotonic() - t0, 3), str(path))


def _stream(store: Store, sql: str, params: dict[str, Any], fmt: str, settings: dict[str, str], part: Path) -> None:
    """A server's formatted response, copied to ``part`` as it arrives."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        stream = store.client().raw_stream(sql, parameters=params, settings=settings, fmt=fmt)
        with open(part, "wb") as out:
            try:
                for chunk in stream:  # clickhouse-connect: "supports iteration over raw bytes"
                    if chunk:
                        out.write(chunk)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
    except ClickHouseError as exc:
        raise StoreError(f"ClickHouse export failed: {str(exc).strip().splitlines()[0][:500]}") from exc
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise ConfigError(f"cannot write {part}: {exc}") from exc
        raise StoreError(f"ClickHouse export failed: {exc}") from exc
