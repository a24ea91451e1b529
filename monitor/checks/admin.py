"""The local admin endpoint of ``monitor up``, and the client the CLI uses to reach it.

``monitor up`` holds its chdb directory (one process per directory), so ``monitor check`` and
``monitor baseline`` cannot open the store themselves while it runs: they send their request
here instead (loopback only by default) and print the same output as in distributed mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from monitor.errors import ConfigError, MonitorError

__all__ = ["AdminServer", "admin_call", "admin_available", "parse_time"]

log = logging.getLogger("monitor.checks")


def parse_time(text: str) -> datetime:
    """ISO 8601 (naive times are UTC), or ``now``, or ``-2h`` / ``-30m`` relative to now."""
    from monitor.checks.windows import parse_duration

    text = text.strip()
    now = datetime.now(timezone.utc)
    if text == "now":
        return now
    if text.startswith("-"):
        return now - parse_duration(text[1:])
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"cannot read the time {text!r}: use ISO 8601 (2026-11-29T10:00) or -2h") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class AdminServer:
    """Serves ``/admin/check``, ``/admin/baseline``, ``/admin/baselines`` and ``/admin/alerts[/test]``
    on the given loop."""

    def __init__(self, runner, host: str, port: int, alerts=None):
        self.runner = runner
        self.alerts = alerts  # the AlertService, when alerts are configured (else None)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/admin/health", lambda r: web.json_response({"status": "ok"}))
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
        body = await request.json()
        try:
            report = await asyncio.get_running_loop().run_in_executor(None, lambda: self.runner.run(
                model=body.get("model"), window=body.get("window"), reference=body.get("reference"),
                only=body.get("only")))
        except MonitorError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.Response(text=json.dumps(report.as_dict(), default=str), content_type="application/json")

    async def _pin(self, request: web.Request) -> web.Response:
        from monitor.checks.windows import pin_baseline

        body = await request.json()
        try:
            start, end = parse_time(body["from"]), parse_time(body["to"])
            await asyncio.get_running_loop().run_in_executor(None, lambda: pin_baseline(
                self.runner.store, body["model"], start, end, body.get("group", ""), body.get("note", "")))
        except (MonitorError, KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"model": body["model"], "from": start.isoformat(), "to": end.isoformat()})

    async def _list(self, request: web.Request) -> web.Response:
        rows = await asyncio.get_running_loop().run_in_executor(None, lambda: self.runner.store.query_rows(
            "SELECT model, group, start, end, pinned_at, note FROM baselines FINAL ORDER BY model, group"))
        return web.Response(text=json.dumps([dict(zip(("model", "group", "from", "to", "pinned_at", "note"), r))
                                             for r in rows], default=str), content_type="application/json")


    async def _alert_test(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.alerts is None:
            return web.json_response({"error": "this monitor has no alert channels configured (alerts.channels)"},
                                     status=400)
        try:
            out = await asyncio.get_running_loop().run_in_executor(None, lambda: self.alerts.send_test(
                str(body["channel"]), float(body.get("wait_s", 30))))
        except (MonitorError, KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(out)

    async def _alerts(self, request: web.Request) -> web.Response:
        from monitor.alerts.service import list_alerts

        n = int(request.query.get("history", "20"))
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
