"""Alerts as one component of ``monitor up`` and ``monitor checks``: the manager, the dispatcher,
and what the CLI asks for (a test notification, the list of alerts).

Wiring: the check scheduler calls :meth:`AlertService.on_report` after each run; ``start`` restores
the alert states and starts delivering the outbox; ``stop`` lets the delivery in flight finish.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from monitor.alerts.dispatcher import Dispatcher
from monitor.alerts.history import LATEST_COLUMNS, latest_sql
from monitor.alerts.manager import AlertManager
from monitor.alerts.outbox import Outbox

if TYPE_CHECKING:
    from monitor.config import Settings

__all__ = ["AlertService", "send_test", "list_alerts"]

log = logging.getLogger("monitor.alerts")


class AlertService:
    def __init__(self, store, settings: Settings, metrics=None, sender=None):
        self.store = store
        self.settings = settings
        self.outbox = Outbox(store)
        self.dispatcher = Dispatcher(self.outbox, settings.alerts, metrics, sender)
        self.manager = AlertManager(store, settings, self.outbox, metrics, on_enqueue=self.dispatcher.wake)

    @staticmethod
    def wanted(settings: Settings) -> bool:
        a = settings.alerts
        return a.enabled and bool(a.rules or a.channels)

    def start(self) -> None:
        self.manager.load()
        self.dispatcher.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.dispatcher.stop(timeout)

    def on_report(self, report) -> None:
        self.manager.evaluate(report)

    def send_test(self, channel: str, wait_s: float = 30.0) -> dict[str, Any]:
        return send_test(self.manager, self.dispatcher, channel, wait_s)


def send_test(manager: AlertManager, dispatcher: Dispatcher, channel: str, wait_s: float) -> dict[str, Any]:
    """Enqueue a test notification and deliver it now (retrying up to ``wait_s``)."""
    row = manager.enqueue_test(channel)
    final = dispatcher.deliver(row.notification_id, channel, wait_s) or row
    return {"channel": channel, "notification_id": row.notification_id, "status": final.status,
            "attempts": final.attempts, "error": final.last_error}


def list_alerts(store, history: int = 20) -> dict[str, Any]:
    """Firing alerts (the latest event of each alert is a fire), recent events, and the outbox."""
    firing = [dict(zip(LATEST_COLUMNS, r)) for r in store.query_rows(latest_sql(firing_only=True))]
    recent = store.query_rows(
        "SELECT timestamp, event, rule, severity, model, group, alert_id, notification_id, summary FROM alert_events "
        "ORDER BY timestamp DESC LIMIT {n:UInt32}", {"n": int(history)})
    outbox = Outbox(store).counts()
    dead = store.query_rows(
        "SELECT notification_id, channel, event, attempts, last_error, updated_at FROM alert_outbox FINAL "
        "WHERE status = 'dead' ORDER BY updated_at DESC LIMIT 10")
    keys = ("timestamp", "event", "rule", "severity", "model", "group", "alert_id", "notification_id", "summary")
    return json.loads(json.dumps({
        "firing": [{"alert_id": a["alert_id"], "rule": a["rule"], "severity": a["severity"], "model": a["model"],
                    "group": a["group"], "since": a["at"], "summary": a["summary"]} for a in firing],
        "recent": [dict(zip(keys, r)) for r in recent],
        "outbox": [{"channel": c, "status": s, "count": n} for (c, s), n in sorted(outbox.items())],
        "dead": [dict(zip(("notification_id", "channel", "event", "attempts", "error", "at"), r)) for r in dead],
    }, default=str))
