"""Records governance on the admin endpoint of ``monitor up`` (README "Records governance").

``monitor up`` holds the chdb directory, so ``monitor erase``, ``monitor export`` and ``monitor audit``
reach it here while it runs (with the endpoint's token, like ``monitor check``), and open the store
themselves otherwise (:func:`erase_direct`, :func:`export_direct`). Either way the action is written
to ``audit_log`` with its actor (:mod:`monitor.governance.actor`):

- ``POST /admin/erase`` ``{"user" | "client" | "conversation": ID, "dry_run": bool}``: the counts per
  table (:class:`~monitor.governance.erase.EraseResult`), plus how many accepted requests were still
  waiting in the spool (they are not erased: run it again once they are stored).
- ``POST /admin/export`` ``{"from", "to", "model", "table", "format"}``: the file's bytes
  (``X-Monitor-Rows``: its rows). The engine writes it into ``<data dir>/exports/`` and it is
  streamed from there and deleted: the endpoint never writes where a caller names. Refused (503)
  when its audit entry cannot be written.
- ``GET /admin/audit?since=7d&actor=&action=&limit=200``: the latest entries, newest first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from monitor.errors import ConfigError, StoreError
from monitor.governance.actor import LOCAL, admin_actor, os_user, request_address
from monitor.governance.audit import ACTIONS, AuditLog, entries
from monitor.governance.erase import KINDS, erase
from monitor.runtime.admin_body import STR, BadRequest, int_param, parse_time, read_object
from monitor.store.export import EXPORT_TABLES, FORMATS, SUFFIX, count_rows, export_to_file

__all__ = ["add_routes", "audit_admin", "erase_direct", "export_direct", "audit_direct", "erase_payload",
           "MAX_AUDIT_ROWS", "record_local", "note_admin"]

log = logging.getLogger("monitor.audit")

MAX_AUDIT_ROWS = 10_000
_CHUNK = 1 << 20
_BOOL = (lambda v: isinstance(v, bool), "true or false")


def add_routes(app: web.Application, server: Any) -> None:
    """Add the routes to the admin endpoint's app; ``server``: the AdminServer (its ``runner.store``,
    ``runner.settings`` and, when the store node set it, ``pending()``)."""
    app.router.add_post("/admin/erase", lambda r: _erase(server, r))
    app.router.add_post("/admin/export", lambda r: _export(server, r))
    app.router.add_get("/admin/audit", lambda r: _audit(server, r))


async def audit_admin(server: Any, request: web.Request, action: str, target: str,
                      details: dict[str, Any] | None = None) -> None:
    """Write one entry for an admin request (raises StoreError when it cannot be written)."""
    actor, address = admin_actor(request), request_address(request)
    await asyncio.get_running_loop().run_in_executor(None, lambda: AuditLog(server.runner.store).record(
        actor, action, target, details, origin="admin", address=address))


async def note_admin(server: Any, request: web.Request, action: str, target: str,
                     details: dict[str, Any] | None = None) -> None:
    """:func:`audit_admin` for actions that go ahead without their entry (a failure is logged)."""
    try:
        await audit_admin(server, request, action, target, details)
    except StoreError as exc:
        log.error("audit entry not written (%s %s): %s", action, target, exc)


def erase_payload(user: str | None, client: str | None, conversation: str | None) -> tuple[str, str]:
    """``(kind, value)`` of exactly one of the three (ConfigError otherwise)."""
    given = [(k, v) for k, v in (("user", user), ("client", client), ("conversation", conversation)) if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --user, --client, --conversation")
    kind, value = given[0]
    if not value.strip():
        raise ConfigError(f"the {kind} to erase is empty")
    return kind, value


async def _erase(server: Any, request: web.Request) -> web.Response:
    body = await read_object(request, {**{k: STR for k in KINDS}, "dry_run": _BOOL})
    try:
        kind, value = erase_payload(body.get("user"), body.get("client"), body.get("conversation"))
    except ConfigError as exc:
        raise BadRequest(str(exc).replace("--", "")) from None
    dry = bool(body.get("dry_run", False))
    result = await asyncio.get_running_loop().run_in_executor(None, lambda: erase(server.runner.store, kind, value, dry))
    pending = getattr(server, "pending", None)
    if callable(pending):
        n = pending()
        if n:
            result.notes.append(f"{n} accepted request(s) were still waiting to be stored; they are not erased. "
                                "Run the erasure again once `monitor status` shows the spool empty.")
    try:
        await audit_admin(server, request, "erase", result.target, _erase_details(result))
    except StoreError as exc:
        result.notes.append(f"the audit entry could not be written: {exc}")
    return web.json_response(result.as_dict())


def _erase_details(result: Any) -> dict[str, Any]:
    return {"dry_run": result.dry_run, "traces": result.traces, "seconds": result.seconds,
            "rows": {t.table: t.matched for t in result.tables if t.matched}}


def _export_args(body: dict[str, Any]) -> tuple[datetime, datetime, str | None, str, str]:
    start, end = parse_time(body["from"]), parse_time(body["to"])
    table = body.get("table", "inference_events")
    fmt = body.get("format", "parquet")
    if table not in EXPORT_TABLES:
        raise ConfigError(f"'table' must be one of {', '.join(EXPORT_TABLES)}, not {table[:50]!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"'format' must be one of {', '.join(FORMATS)}, not {fmt[:50]!r}")
    if not end > start:
        raise ConfigError(f"'to' ({end.isoformat()}) must be after 'from' ({start.isoformat()})")
    return start, end, body.get("model") or None, table, fmt


async def _export(server: Any, request: web.Request) -> web.StreamResponse:
    body = await read_object(request, {"from": STR, "to": STR, "model": STR, "table": STR, "format": STR},
                              required=("from", "to"))
    start, end, model, table, fmt = _export_args(body)
    store = server.runner.store
    loop = asyncio.get_running_loop()
    rows = await loop.run_in_executor(None, lambda: count_rows(store, table, start, end, model))
    await audit_admin(server, request, "export", table, _export_details(start, end, model, table, fmt, rows))
    folder = _export_dir(server)
    path = folder / f"export-{uuid.uuid4().hex}{SUFFIX[fmt]}"
    try:
        result = await loop.run_in_executor(None, lambda: export_to_file(store, path, table, start, end, model, fmt,
                                                                         rows=rows))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(result.bytes), "X-Monitor-Rows": str(result.rows),
                                           "X-Monitor-Seconds": str(result.seconds)})
        await resp.prepare(request)
        with open(path, "rb") as fh:
            while True:
                chunk = await loop.run_in_executor(None, fh.read, _CHUNK)
                if not chunk:
                    break
                await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        path.unlink(missing_ok=True)


def _export_dir(server: Any) -> Path:
    store = server.runner.store
    if store.embedded:
        folder = store.settings.chdb_path() / "exports"
    else:
        import tempfile
        folder = Path(tempfile.gettempdir()) / "llm-monitor-exports"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def _export_details(start: datetime, end: datetime, model: str | None, table: str, fmt: str,
                    rows: int) -> dict[str, Any]:
    return {"from": start.isoformat(), "to": end.isoformat(), "model": model, "table": table, "format": fmt,
            "rows": rows}


async def _audit(server: Any, request: web.Request) -> web.Response:
    start, end = _since(request.query.get("since", "7d"), BadRequest)
    action = request.query.get("action") or None
    if action is not None and action not in ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}, not {action[:50]!r}")
    limit = int_param(request, "limit", 200, 1, MAX_AUDIT_ROWS)
    out = await asyncio.get_running_loop().run_in_executor(None, lambda: entries(
        server.runner.store, start, end, request.query.get("actor") or None, action, limit))
    return web.Response(text=json.dumps(out, default=str), content_type="application/json")


def _since(text: str, error: type[Exception] = ConfigError) -> tuple[datetime, datetime]:
    from monitor.checks.windows import parse_duration

    try:
        span = parse_duration(text)
    except (OverflowError, ValueError, ConfigError):
        raise error(f"'since' must be a duration like 30m, 24h or 7d, not {text[:50]!r}") from None
    end = datetime.now(timezone.utc)
    try:
        return end - span, end
    except OverflowError:
        raise error(f"'since' {text[:50]!r} is too long") from None


# -- the same, with the store opened by the command itself ----------------------------------------


def _cli_details(details: dict[str, Any]) -> dict[str, Any]:
    return {**details, "os_user": os_user()}


def erase_direct(store: Any, kind: str, value: str, dry_run: bool) -> dict[str, Any]:
    result = erase(store, kind, value, dry_run)
    try:
        AuditLog(store).record(LOCAL, "erase", result.target, _cli_details(_erase_details(result)), origin="cli")
    except StoreError as exc:
        result.notes.append(f"the audit entry could not be written: {exc}")
    return result.as_dict()


def export_direct(store: Any, out: Path, body: dict[str, Any]) -> dict[str, Any]:
    start, end, model, table, fmt = _export_args(body)
    rows = count_rows(store, table, start, end, model)
    AuditLog(store).record(LOCAL, "export", table, _cli_details(_export_details(start, end, model, table, fmt, rows)),
                           origin="cli")  # no entry, no export
    return export_to_file(store, out, table, start, end, model, fmt, rows=rows).as_dict()


def audit_direct(store: Any, since: str, actor: str | None, action: str | None, limit: int) -> list[dict[str, Any]]:
    start, end = _since(since)
    if action is not None and action not in ACTIONS:
        raise ConfigError(f"--action must be one of {', '.join(ACTIONS)}, not {action!r}")
    return entries(store, start, end, actor, action, limit)


def record_local(store: Any, action: str, target: str, details: dict[str, Any] | None = None) -> None:
    """An entry for a command that opened the store itself (``monitor baseline pin`` and the like);
    a failure is logged, the command's work is done."""
    try:
        AuditLog(store).record(LOCAL, action, target, _cli_details(details or {}), origin="cli")
    except StoreError as exc:
        log.error("audit entry not written (%s %s): %s", action, target, exc)
