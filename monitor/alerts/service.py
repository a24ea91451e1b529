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
from monitor.alerts.history import LATEST_COLUMNS, RECENT_COLUMNS, latest_sql, recent_sql
from monitor.alerts.manager import AlertManager
from monitor.alerts.outbox import Outbox

if TYPE_CHECKING:
    from monitor.config import AlertsSettings

__all__ = ["AlertService", "send_test", "list_alerts"]

log = logging.getLogger("monitor.alerts")


class AlertService:
    """``alerts``: the ``alerts`` section of the settings; ``min_samples``: ``checks.min_samples``
    (see :class:`~monitor.alerts.manager.AlertManager`)."""

    def __init__(self, store, alerts: AlertsSettings, min_samples: int, metrics=None, sender=None):
        self.store = store
        self.alerts = alerts
        self.outbox = Outbox(store)
        self.dispatcher = Dispatcher(self.outbox, alerts, metrics, sender)
        self.manager = AlertManager(store, alerts, min_samples, self.outbox, metrics,
                                    on_enqueue=self.dispatcher.wake)

    @staticmethod
    def wanted(alerts: AlertsSettings) -> bool:
        """Whether the ``alerts`` section asks for the service (enabled, with rules or channels)."""
        return alerts.enabled and bool(alerts.rules or alerts.channels)

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
    recent = store.query_rows(recent_sql(), {"limit": int(history)})
    box = Outbox(store)
    outbox = box.counts()
    # "at" naive like every other time here (ClickHouse's UTC, printed without an offset)
    dead = [{"notification_id": r.notification_id, "channel": r.channel, "event": r.event, "attempts": r.attempts,
             "error": r.last_error, "at": r.updated_at.replace(tzinfo=None)} for r in box.dead(10)]
    return json.loads(json.dumps({
        "firing": [{"alert_id": a["alert_id"], "rule": a["rule"], "severity": a["severity"], "model": a["model"],
                    "group": a["group"], "since": a["at"], "summary": a["summary"]} for a in firing],
        "recent": [dict(zip(RECENT_COLUMNS, r)) for r in recent],
        "outbox": [{"channel": c, "status": s, "count": n} for (c, s), n in sorted(outbox.items())],
        "dead": dead,
    }, default=str))
