"""What each channel type receives: the payload stored in the outbox, and the request sent.

The payload is built once, when a notification is enqueued, from the ``alert_events`` row alone,
so enqueueing the same event again yields byte-identical rows. It holds no secret: the webhook
signature (over the delivery time) and the PagerDuty routing key are added by
:func:`render_request` at each attempt, from the config.

- ``webhook``: our JSON (``version``, ``notification_id``/``idempotency_key``, ``event``
  fire|resolve|test, ``alert``, ``results``), signed (see :mod:`monitor.alerts.signing`).
- ``slack``: an incoming-webhook message, ``{"text", "blocks"}``.
- ``pagerduty``: an Events API v2 event, ``dedup_key`` = the alert id, so PagerDuty keeps one
  incident per alert and a repeated trigger or resolve is a no-op.

A channel type or a payload these functions cannot use raises from the error tree
(:mod:`monitor.errors`): :class:`~monitor.errors.ConfigError` for a type the config should not
have let through, :class:`~monitor.errors.PermanentError` for a stored payload no attempt can
send (the dispatcher marks its row dead at once).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from monitor.alerts.signing import IDEMPOTENCY_HEADER, signature_headers
from monitor.errors import ConfigError, PermanentError

__all__ = ["build_payload", "render_request", "iso", "channel_secrets"]

_PD_ACTION = {"fire": "trigger", "resolve": "resolve", "test": "trigger"}
_SLACK_MARK = {"fire": ":rotating_light:", "resolve": ":white_check_mark:", "test": ":wave:"}


def iso(t: datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)


def build_payload(channel_type: str, event: dict[str, Any], source: str) -> str:
    """The JSON body for one channel type, from an alert event (the columns of ``alert_events``
    with ``details`` decoded)."""
    if channel_type == "webhook":
        return _dumps(_webhook(event, source))
    if channel_type == "slack":
        return _dumps(_slack(event, source))
    if channel_type == "pagerduty":
        return _dumps(_pagerduty(event, source))
    raise ConfigError(f"unknown alert channel type {channel_type!r} (alerts.channels.<name>.type: webhook, slack "
                      "or pagerduty)")


def _alert(event: dict[str, Any]) -> dict[str, Any]:
    d = event["details"]
    status = {"fire": "firing", "resolve": "resolved", "test": "test"}[event["event"]]
    return {"id": event["alert_id"], "rule": event["rule"], "severity": event["severity"], "status": status,
            "model": event["model"], "group": event["group"], "summary": event["summary"],
            "check": d.get("check", ""), "metric": d.get("metric", ""),
            "started_at": d.get("fired_at"), "resolved_at": iso(event["timestamp"]) if event["event"] == "resolve"
            else None}


def _webhook(event: dict[str, Any], source: str) -> dict[str, Any]:
    return {"version": 1, "source": source, "notification_id": event["notification_id"],
            "idempotency_key": event["notification_id"], "event": event["event"],
            "timestamp": iso(event["timestamp"]), "alert": _alert(event),
            "results": event["details"].get("results", [])}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack(event: dict[str, Any], source: str) -> dict[str, Any]:
    a = _alert(event)
    mark = _SLACK_MARK[event["event"]]
    title = {"fire": f"{a['rule']} firing", "resolve": f"{a['rule']} resolved",
             "test": "Test notification"}[event["event"]]
    lines = [f"*{_escape(a['summary'])}*"]
    if event["event"] != "test":
        lines.append(f"model `{_escape(a['model'])}`" + (f"  group `{_escape(a['group'])}`" if a["group"] else "")
                     + f"  severity *{a['severity']}*")
    for r in event["details"].get("results", [])[:10]:
        value = "" if r.get("value") is None else f" value {r['value']:.4g}"
        ref = "" if r.get("reference_value") is None else f" (reference {r['reference_value']:.4g})"
        lines.append(f"• {_escape(r['check'])} `{_escape(r['metric'])}` {r['status']}{value}{ref}")
    return {"text": f"{mark} {a['summary']}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": f"{title}"[:150], "emoji": True}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900]}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(
                    f"{source} · {iso(event['timestamp'])} · alert {a['id']} · notification "
                    f"{event['notification_id']}")}]},
            ]}


def _pagerduty(event: dict[str, Any], source: str) -> dict[str, Any]:
    ev = event["event"]
    dedup = event["alert_id"] if ev != "test" else f"test-{event['notification_id']}"
    body: dict[str, Any] = {"event_action": _PD_ACTION[ev], "dedup_key": dedup, "client": source}
    if ev == "resolve":
        return body  # Events v2: a resolve needs only the routing key, the action and the dedup key
    d = event["details"]
    body["payload"] = {
        "summary": event["summary"][:1024], "source": source, "severity": event["severity"],
        "timestamp": iso(event["timestamp"]), "component": event["model"] or None,
        "group": event["group"] or None, "class": d.get("check") or None,
        "custom_details": {"rule": event["rule"], "alert_id": event["alert_id"],
                           "notification_id": event["notification_id"], "metric": d.get("metric"),
                           "results": d.get("results", [])},
    }
    body["payload"] = {k: v for k, v in body["payload"].items() if v is not None}
    return body


def render_request(channel, payload: str, notification_id: str, now: float | None = None,
                   user_agent: str = "llm-monitor") -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, body)`` of one attempt on ``channel`` (an ``AlertChannel`` from the config).

    The URL is the configured one, never anything from the payload or a request. Raises
    :class:`~monitor.errors.PermanentError` for a stored payload that cannot be sent (corrupt)."""
    headers = {"Content-Type": "application/json", "User-Agent": user_agent, **channel.headers}
    if channel.type == "pagerduty":
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise PermanentError(f"{type(exc).__name__}: the stored payload is not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise PermanentError(f"the stored payload is JSON but not an object ({type(data).__name__})")
        body = _dumps({"routing_key": channel.routing_key.get_secret_value(), **data}).encode()
    else:
        body = payload.encode()
    headers[IDEMPOTENCY_HEADER] = notification_id
    if channel.type == "webhook":
        headers.update(signature_headers(channel.secret.get_secret_value(), body, notification_id, now))
    return channel.url, headers, body


def channel_secrets(channel) -> list[str]:
    """What of ``channel`` must never reach a log line or a stored row: its secret, routing key,
    extra header values, and a Slack URL (whose path is the credential)."""
    out = [v.get_secret_value() for v in (channel.secret, channel.routing_key) if v is not None]
    out += [v for v in channel.headers.values() if v]
    if channel.type == "slack" and channel.url:
        from urllib.parse import urlsplit
        parts = urlsplit(channel.url)
        out += [channel.url, parts.path + (f"?{parts.query}" if parts.query else "")]
    return out
