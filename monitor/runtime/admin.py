"""The local admin endpoint of ``monitor up``, and the client the CLI uses to reach it.

``monitor up`` holds its chdb directory (one process per directory), so ``monitor check`` and
``monitor baseline`` cannot open the store themselves while it runs: they send their request
here instead (loopback only by default) and print the same output as in distributed mode.

Every answer is JSON. A request the endpoint cannot use (a body that is not a JSON object, a
field of the wrong type or out of range, an unknown field, a bad query parameter) is answered 400
and a body over 1 MiB 413, each with ``{"error": "<what was wrong>"}``; an error inside the
monitor is 500 with a one-line ``error`` and no traceback (that goes to the log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from monitor.errors import ConfigError, MonitorError, RetryableError

__all__ = ["AdminServer", "admin_call", "admin_available", "parse_time", "MAX_BODY_BYTES", "MAX_HISTORY",
           "MAX_WAIT_S"]

log = logging.getLogger("monitor.checks")

MAX_BODY_BYTES = 1024 * 1024
"""Larger request bodies are refused (413) before they are parsed."""
MAX_HISTORY = 10_000
"""The most alert events ``/admin/alerts?history=N`` lists."""
MAX_WAIT_S = 3600.0
"""The longest ``wait_s`` of ``/admin/alerts/test``."""
_REFERENCES = ("auto", "baseline", "day", "week")


def parse_time(text: str) -> datetime:
    """ISO 8601 (naive times are UTC), or ``now``, or ``-2h`` / ``-30m`` relative to now."""
    from monitor.checks.windows import parse_duration

    text = text.strip()
    now = datetime.now(timezone.utc)
    if text == "now":
        return now
    if text.startswith("-"):
        try:
            return now - parse_duration(text[1:])
        except OverflowError:
            raise ConfigError(f"cannot read the time {text!r}: too far in the past") from None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"cannot read the time {text!r}: use ISO 8601 (2026-11-29T10:00) or -2h") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class _BadRequest(Exception):
    """What was wrong with a request; answered ``status`` with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# field kinds of a request body: name -> (check, what it must be)
_STR = (lambda v: isinstance(v, str), "a string")
_STRS = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
_NUM = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a finite number")


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


async def _read_object(request: web.Request, fields: dict[str, tuple], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object body, each field of its kind in ``fields`` (null: absent).
    An empty body is ``{}``. Raises :class:`_BadRequest` saying what was wrong."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _BadRequest(f"the body is {request.content_length} bytes; at most {MAX_BODY_BYTES} are accepted", 413)
    raw = await request.read()  # over client_max_size (a chunked body): HTTPRequestEntityTooLarge
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(raw)
        except RecursionError:
            raise _BadRequest("the body is not valid JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            raise _BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest(f"the body must be a JSON object, not {_kind(body)}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise _BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; expected: {', '.join(fields)}")
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise _BadRequest(f"missing field(s) {', '.join(map(repr, missing))}")
    for name, value in body.items():
        ok, what = fields[name]
        if value is not None and not ok(value):
            raise _BadRequest(f"{name!r} must be {what}, not {_kind(value)}")
    return {k: v for k, v in body.items() if v is not None}


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.strip().isascii() or not text.strip().isdigit() or not lo <= int(text) <= hi:
        raise _BadRequest(f"{name} must be a whole number from {lo} to {hi}, not {text[:50]!r}")
    return int(text)


@web.middleware
async def _json_errors(request: web.Request, handler):
    """Every error as ``{"error": ...}``; nothing of a traceback leaves the process."""
    try:
        return await handler(request)
    except _BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": f"the body is over {MAX_BODY_BYTES} bytes, the most accepted"},
                                 status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": f"{exc.status} {exc.reason}: {request.method} {request.path}"},
                                 status=exc.status, headers={k: v for k, v in exc.headers.items()
                                                             if k.lower() == "allow"})
    except RetryableError as exc:  # the store is away: the caller may try again
        return web.json_response({"error": str(exc)}, status=503)
    except MonitorError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except Exception as exc:
        log.exception("admin request %s %s failed", request.method, request.path)
        return web.json_response({"error": f"internal error ({type(exc).__name__}); see the monitor's log"},
                                 status=500)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class AdminServer:
    """Serves ``/admin/check``, ``/admin/baseline``, ``/admin/baselines`` and ``/admin/alerts[/test]``
    on the given loop."""

    def __init__(self, runner, host: str, port: int, alerts=None):
        self.runner = runner
        self.alerts = alerts  # the AlertService, when alerts are configured (else None)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/admin/health", _health)
        app.router.add_post("/admin/check", self._check)
        app.router.add_post("/admin/baseline", self._pin)
        app.router.add_get("/admin/baselines", self._list)
        app.router.add_post("/admin/alerts/test", self._alert_test)
        app.router.add_get("/admin/alerts", self._alerts)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _check(self, request: web.Request) -> web.Response:
        from monitor.checks.windows import parse_duration

        body = await _read_object(request, {"model": _STR, "window": _STR, "reference": _STR, "only": _STRS})
        if "window" in body:
            try:
                span = parse_duration(body["window"])
            except OverflowError:
                raise _BadRequest(f"the window {body['window'][:50]!r} is too long") from None
            if span.total_seconds() <= 0:
                raise _BadRequest(f"the window {body['window'][:50]!r} is empty")
        if body.get("reference", "auto") not in _REFERENCES:
            raise _BadRequest(f"'reference' must be one of {', '.join(_REFERENCES)}, not {body['reference'][:50]!r}")
        report = await asyncio.get_running_loop().run_in_executor(None, lambda: self.runner.run(
            model=body.get("model"), window=body.get("window"), reference=body.get("reference"),
            only=body.get("only")))
        return web.Response(text=json.dumps(report.as_dict(), default=str), content_type="application/json")

    async def _pin(self, request: web.Request) -> web.Response:
        from monitor.checks.base import Window
        from monitor.checks.windows import pin_baseline

        body = await _read_object(request, {"model": _STR, "from": _STR, "to": _STR, "group": _STR, "note": _STR},
                                 required=("model", "from", "to"))
        if not body["model"].strip():
            raise _BadRequest("'model' must not be empty")
        start, end = parse_time(body["from"]), parse_time(body["to"])
        try:
            Window(start, end)
        except ValueError:
            raise _BadRequest(f"'to' ({end.isoformat()}) must be after 'from' ({start.isoformat()})") from None
        await asyncio.get_running_loop().run_in_executor(None, lambda: pin_baseline(
            self.runner.store, body["model"], start, end, body.get("group", ""), body.get("note", "")))
        return web.json_response({"model": body["model"], "from": start.isoformat(), "to": end.isoformat()})

    async def _list(self, request: web.Request) -> web.Response:
        rows = await asyncio.get_running_loop().run_in_executor(None, lambda: self.runner.store.query_rows(
            "SELECT model, group, start, end, pinned_at, note FROM baselines FINAL ORDER BY model, group"))
        return web.Response(text=json.dumps([dict(zip(("model", "group", "from", "to", "pinned_at", "note"), r))
                                             for r in rows], default=str), content_type="application/json")

    async def _alert_test(self, request: web.Request) -> web.Response:
        body = await _read_object(request, {"channel": _STR, "wait_s": _NUM}, required=("channel",))
        wait_s = float(body.get("wait_s", 30))
        if not 0 <= wait_s <= MAX_WAIT_S:
            raise _BadRequest(f"'wait_s' must be from 0 to {MAX_WAIT_S:g} seconds, not {wait_s:g}")
        if self.alerts is None:
            raise _BadRequest("this monitor has no alert channels configured (alerts.channels)")
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: self.alerts.send_test(
            body["channel"], wait_s))
        return web.json_response(out)

    async def _alerts(self, request: web.Request) -> web.Response:
        from monitor.alerts.service import list_alerts

        n = _int_param(request, "history", 20, 0, MAX_HISTORY)
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: list_alerts(self.runner.store, n))
        return web.json_response(out)


def _url(settings, path: str) -> str:
    c = settings.checks
    host = "127.0.0.1" if c.admin_host in ("0.0.0.0", "") else c.admin_host
    return f"http://{host}:{c.admin_port}{path}"


def admin_available(settings) -> bool:
    try:
        with urllib.request.urlopen(_url(settings, "/admin/health"), timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def admin_call(settings, path: str, payload: dict[str, Any] | None = None, timeout: float = 600) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(_url(settings, path), data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise ConfigError(json.loads(exc.read() or b"{}").get("error", str(exc))) from None
