"""The local admin endpoint of ``monitor up``, and the client the CLI uses to reach it.

``monitor up`` holds its chdb directory (one process per directory), so ``monitor check`` and
``monitor baseline`` cannot open the store themselves while it runs: they send their request
here instead (loopback only by default) and print the same output as in distributed mode.

What it does matters (pinning a baseline hides drift; test alerts page people), so it answers
only a caller holding its token, and refuses what a web page could send (a cross-site POST, or
one through DNS rebinding), in this order, before any handler runs:

1. a ``Host`` that does not name the address it listens on: 403 (DNS rebinding);
2. an ``Origin`` or ``Sec-Fetch-*`` header, i.e. any request a browser made: 403;
3. a credential in the query string: 400 (it is not looked at, and nothing logs it);
4. no ``Authorization: Bearer <token>``, or another token (constant-time): 401;
5. a POST whose ``Content-Type`` is not ``application/json`` (a form or ``text/plain`` body, what
   a page can send without asking): 415.

The token is ``checks.admin_token`` when set; otherwise ``monitor up`` makes a new one at every
start and writes it, readable by its user only, to ``checks.admin_token_file(port)``, where the
CLI (:func:`admin_call`) reads it. A captured request replays (a static bearer token), but only
within this start of the monitor, and only a local process could capture it.

Every answer is JSON. A request the endpoint cannot use (a body that is not a JSON object, a
field of the wrong type or out of range, an unknown field, a bad query parameter) is answered 400
and a body over 1 MiB 413, each with ``{"error": "<what was wrong>"}``; an error inside the
monitor is 500 with a one-line ``error`` and no traceback (that goes to the log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import web

from monitor.auth import (
    bearer_ok,
    host_names_bind,
    new_token,
    query_has_credential,
    read_token_file,
    secret_value,
    write_token_file,
)
from monitor.errors import ConfigError, MonitorError, RetryableError
from monitor.runtime import records
from monitor.runtime.admin_body import BOOL as _BOOL_FIELD
from monitor.runtime.admin_body import MAX_BODY_BYTES, parse_time
from monitor.runtime.admin_body import NUM as _NUM
from monitor.runtime.admin_body import STR as _STR
from monitor.runtime.admin_body import STRS as _STRS
from monitor.runtime.admin_body import BadRequest as _BadRequest
from monitor.runtime.admin_body import int_param as _int_param
from monitor.runtime.admin_body import read_object as _read_object

__all__ = ["AdminServer", "admin_call", "admin_download", "admin_available", "admin_token", "parse_time",
           "MAX_BODY_BYTES", "MAX_HISTORY", "MAX_WAIT_S"]

log = logging.getLogger("monitor.checks")

MAX_HISTORY = 10_000
"""The most alert events ``/admin/alerts?history=N`` lists."""
MAX_WAIT_S = 3600.0
"""The longest ``wait_s`` of ``/admin/alerts/test``."""
_REFERENCES = ("auto", "baseline", "day", "week")


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


def _guard(token: str, bind_host: str, metrics):
    """The checks of the module docstring, in its order."""

    @web.middleware
    async def guard(request: web.Request, handler):
        def deny(status: int, reason: str, message: str, headers: dict | None = None) -> web.Response:
            if metrics is not None:
                metrics.auth_refused.labels("admin", reason).inc()
            return web.json_response({"error": message}, status=status, headers=headers)

        if not host_names_bind(request.headers.get("Host"), bind_host):
            return deny(403, "bad_host", "the Host header does not name the address this endpoint listens on")
        if "Origin" in request.headers or any(h.lower().startswith("sec-fetch-") for h in request.headers):
            return deny(403, "browser_origin", "requests from a web browser are refused; use the monitor CLI")
        if request.query_string and query_has_credential(request.query.items(), token):
            return deny(400, "credential_in_query", "credentials are not accepted in the query string; "
                        "send Authorization: Bearer <token>")
        if not bearer_ok(request.headers.get("Authorization"), token):
            return deny(401, "unauthenticated", "missing or invalid admin token (the CLI reads it from the "
                        "token file monitor up writes, or from checks.admin_token)", {"WWW-Authenticate": "Bearer"})
        if request.method == "POST" and request.content_type != "application/json":
            return deny(415, "content_type", f"a POST must be Content-Type: application/json, not "
                        f"{request.content_type[:60]!r}")
        return await handler(request)

    return guard


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class AdminServer:
    """Serves ``/admin/check``, ``/admin/baseline``, ``/admin/baselines`` and ``/admin/alerts[/test]``
    on the given loop, to callers holding ``token`` (see the module docstring)."""

    def __init__(self, runner, host: str, port: int, alerts=None, *, token: str, metrics=None):
        if not token:
            raise ValueError("the admin endpoint needs a token")
        self.runner = runner
        self.alerts = alerts  # the AlertService, when alerts are configured (else None)
        self.host, self.port = host, port
        self.token = token
        self.metrics = metrics
        self._runner: web.AppRunner | None = None

    async def start(self, on_bound: Callable[[int], None] | None = None) -> int:
        """Listen; ``on_bound(port)`` runs once the port is bound and before any request is answered
        (``monitor up`` writes the token file there, so a CLI that finds the port finds its token)."""
        app = web.Application(middlewares=[_json_errors, _guard(self.token, self.host, self.metrics)],
                              client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/admin/health", _health)
        app.router.add_post("/admin/check", self._check)
        app.router.add_post("/admin/compare", self._compare)
        app.router.add_post("/admin/baseline", self._pin)
        app.router.add_get("/admin/baselines", self._list)
        app.router.add_post("/admin/alerts/test", self._alert_test)
        app.router.add_get("/admin/alerts", self._alerts)
        app.router.add_get("/admin/clients", self._clients)
        records.add_routes(app, self)  # /admin/erase, /admin/export, /admin/audit (records governance)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = _bind(self.host, self.port)
        try:
            self.port = sock.getsockname()[1]
            if on_bound is not None:
                on_bound(self.port)
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            await self.stop()
            raise
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
        await records.note_admin(self, request, "run_checks", body.get("model") or "", body)
        return web.Response(text=json.dumps(report.as_dict(), default=str), content_type="application/json")

    async def _compare(self, request: web.Request) -> web.Response:
        """``monitor compare`` while ``monitor up`` holds the store: ``{"a", "b", "window", "semantic"}``."""
        from monitor.checks.compare.queries import parse_side
        from monitor.checks.compare.report import compare
        from monitor.checks.windows import current_window

        body = await _read_object(request, {"a": _STR, "b": _STR, "window": _STR, "semantic": _BOOL_FIELD},
                                  required=("a", "b"))
        try:
            a, b = parse_side(body["a"]), parse_side(body["b"])
            w = current_window(body.get("window", "24h"))
        except (ConfigError, OverflowError, ValueError) as exc:
            raise _BadRequest(str(exc)) from None
        semantic = self.runner.settings.semantic
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: compare(
            self.runner.store, a, b, w.start, w.end, semantic=body.get("semantic", True),
            semantic_settings=semantic))
        return web.Response(text=json.dumps(out, default=str), content_type="application/json")

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
        await records.note_admin(self, request, "pin_baseline", body["model"], {
            "from": start.isoformat(), "to": end.isoformat(), "group": body.get("group", ""),
            "note": body.get("note", "")})
        return web.json_response({"model": body["model"], "from": start.isoformat(), "to": end.isoformat()})

    async def _list(self, request: web.Request) -> web.Response:
        from monitor.checks.windows import list_baselines

        rows = await asyncio.get_running_loop().run_in_executor(None, lambda: list_baselines(self.runner.store))
        return web.Response(text=json.dumps(rows, default=str), content_type="application/json")

    async def _alert_test(self, request: web.Request) -> web.Response:
        body = await _read_object(request, {"channel": _STR, "wait_s": _NUM}, required=("channel",))
        wait_s = float(body.get("wait_s", 30))
        if not 0 <= wait_s <= MAX_WAIT_S:
            raise _BadRequest(f"'wait_s' must be from 0 to {MAX_WAIT_S:g} seconds, not {wait_s:g}")
        if self.alerts is None:
            raise _BadRequest("this monitor has no alert channels configured (alerts.channels)")
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: self.alerts.send_test(
            body["channel"], wait_s))
        await records.note_admin(self, request, "test_alert", body["channel"], {"status": out.get("status")})
        return web.json_response(out)

    async def _alerts(self, request: web.Request) -> web.Response:
        from monitor.alerts.service import list_alerts

        n = _int_param(request, "history", 20, 0, MAX_HISTORY)
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: list_alerts(self.runner.store, n))
        return web.json_response(out)

    async def _clients(self, request: web.Request) -> web.Response:
        from monitor.checks.clients import client_usage

        start, end, model, limit = clients_request(request.query.get("window", "1h"), request.query.get("model"),
                                                   _int_param(request, "limit", 100, 1, 10_000))
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: client_usage(
            self.runner.store, start, end, model, limit))
        return web.json_response(out)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``'s first address (SO_REUSEADDR, as aiohttp's TCPSite)."""
    family, _, _, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                               flags=socket.AI_PASSIVE)[0]
    return socket.create_server(addr[:2], family=family, reuse_port=False)


def server_token(settings) -> str:
    """The token ``monitor up``'s admin endpoint requires: ``checks.admin_token``, else a new one
    (written to the token file by :func:`publish_token` once the port is known)."""
    return secret_value(settings.checks.admin_token) or new_token()


def publish_token(settings, port: int, token: str):
    """Write ``token`` to the admin token file of ``port`` (unless it came from the settings, which
    the CLI reads too); returns the path written, or None."""
    if secret_value(settings.checks.admin_token):
        return None
    path = settings.checks.admin_token_file(port)
    write_token_file(path, token)
    return path


def unpublish_token(path, token: str) -> None:
    """Remove the token file at stop, if it still holds this start's token."""
    try:
        if read_token_file(path) == token:
            path.unlink()
    except (OSError, ConfigError):
        pass


def admin_token(settings) -> str | None:
    """The token this command sends: ``checks.admin_token``, else the token file of the admin port."""
    return secret_value(settings.checks.admin_token) or read_token_file(
        settings.checks.admin_token_file(settings.checks.admin_port))


def clients_request(window: str, model: str | None, limit: int) -> tuple[datetime, datetime, str | None, int]:
    """``(start, end, model, limit)`` of a ``monitor clients`` request (the window ends now)."""
    from monitor.checks.windows import parse_duration

    try:
        span = parse_duration(window)
        start = datetime.now(timezone.utc) - span
    except (OverflowError, ValueError):
        raise _BadRequest(f"the window {window[:50]!r} is too long") from None
    except ConfigError as exc:
        raise _BadRequest(str(exc)) from None
    if span.total_seconds() <= 0:
        raise _BadRequest(f"the window {window[:50]!r} is empty")
    return start, datetime.now(timezone.utc), (model or None), limit


def _url(settings, path: str) -> str:
    c = settings.checks
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(c.admin_host, c.admin_host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{c.admin_port}{path}"


def _request(settings, path: str, data: bytes | None = None) -> urllib.request.Request:
    headers = {"Content-Type": "application/json"}
    token = admin_token(settings)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(_url(settings, path), data=data, method="POST" if data is not None else "GET",
                                  headers=headers)


def _refused(settings, exc: urllib.error.HTTPError) -> ConfigError:
    c = settings.checks
    where = "checks.admin_token" if secret_value(c.admin_token) else \
        f"the token file {c.admin_token_file(c.admin_port)}"
    return ConfigError(f"the monitor on the admin port {c.admin_port} refused this command ({exc.code}): the "
                       f"token from {where} is missing or not its own. Run this command as the user running "
                       "`monitor up`, or give both the same MONITOR_CHECKS__ADMIN_TOKEN")


def admin_available(settings) -> bool:
    """Whether a monitor answers on the admin port with this command's token. Raises
    :class:`ConfigError` when one answers but refuses the token."""
    try:
        with urllib.request.urlopen(_request(settings, "/admin/health"), timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _refused(settings, exc) from None
        return False
    except OSError:
        return False


def admin_call(settings, path: str, payload: dict[str, Any] | None = None, timeout: float = 600) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    try:
        with urllib.request.urlopen(_request(settings, path, data), timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _refused(settings, exc) from None
        raise ConfigError(json.loads(exc.read() or b"{}").get("error", str(exc))) from None


def admin_download(settings, path: str, payload: dict[str, Any], out, timeout: float = 3600) -> dict[str, str]:
    """POST ``payload`` and copy the response's bytes to the binary file ``out`` as they come (an
    export); returns the response headers. Errors as :func:`admin_call`."""
    data = json.dumps(payload).encode()
    try:
        with urllib.request.urlopen(_request(settings, path, data), timeout=timeout) as r:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
            return dict(r.headers.items())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _refused(settings, exc) from None
        raise ConfigError(json.loads(exc.read() or b"{}").get("error", str(exc))) from None
