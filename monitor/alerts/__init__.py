"""Alerts: rules over check results, delivered to webhooks, Slack and PagerDuty through a durable
outbox in ClickHouse. Receivers verify webhook signatures with :func:`verify`."""

from monitor.alerts.signing import sign, verify

__all__ = ["sign", "verify", "AlertService", "AlertManager", "Dispatcher", "Outbox"]


def __getattr__(name):  # the rest pulls in the checks; a receiver importing verify() needs none of it
    if name == "AlertService":
        from monitor.alerts.service import AlertService
        return AlertService
    if name == "AlertManager":
        from monitor.alerts.manager import AlertManager
        return AlertManager
    if name == "Dispatcher":
        from monitor.alerts.dispatcher import Dispatcher
        return Dispatcher
    if name == "Outbox":
        from monitor.alerts.outbox import Outbox
        return Outbox
    raise AttributeError(name)
