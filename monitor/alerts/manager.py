"""The alert state machine: rules over each check run's results -> fire / resolve -> outbox.

Per alert (rule x model x group, :func:`~monitor.alerts.rules.alert_id`)::

    inactive --match--> pending --held for_s, cooldown over--> firing --no match--> resolved
       ^                  |                                                           |
       +----no match------+        resolved --match--> pending (fires once cooldown_s has passed)

A run without a verdict for an alert (its scope had no events, its results were
``insufficient_data``) leaves it where it is.

Crash safety. A transition is written in three steps: its ``alert_events`` row (the commit
point, with a deterministic ``notification_id``), its outbox rows, then ``alert_state``. On start
:meth:`AlertManager.load` takes the state from ``alert_state``, lets a newer ``alert_events`` row
win (a crash after step 1), and enqueues the outbox rows of the latest event of each alert that
lack them (a crash after step 1 or during step 2). The payload is built from the event row alone,
so the re-enqueued row is the one that would have been written, and never a second notification.
One evaluator per store: run ``monitor up`` or one ``monitor checks``, not several.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from monitor.alerts.channels import build_payload, iso
from monitor.alerts.history import latest_sql
from monitor.alerts.outbox import Outbox, OutboxRow, to_ms, utc
from monitor.alerts.rules import alert_id, describe, match_rule, result_summary

if TYPE_CHECKING:
    from monitor.config import AlertsSettings

__all__ = ["AlertManager", "AlertState", "EVENT_COLUMNS", "notification_id"]

log = logging.getLogger("monitor.alerts")

EVENT_COLUMNS = ("timestamp", "alert_id", "rule", "severity", "model", "group", "event", "notification_id", "summary",
                 "details")
_STATE_COLUMNS = ("alert_id", "rule", "model", "group", "state", "since", "resolved_at", "updated_at")


def notification_id(alert: str, event: str, at: datetime) -> str:
    """Deterministic: the same transition of the same alert at the same time has the same id."""
    return hashlib.sha256(f"{alert}\x1f{event}\x1f{iso(at)}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class AlertState:
    alert_id: str
    rule: str
    model: str
    group: str
    state: str  # inactive | pending | firing | resolved
    since: datetime
    """When this state began (pending: the first match; firing: when it fired)."""
    resolved_at: datetime | None = None
    """The last resolve, for the cooldown."""


class AlertManager:
    """Evaluates rules on each :class:`~monitor.checks.runner.RunReport` (see the module docstring).

    ``alerts``: the ``alerts`` section of the settings; ``min_samples``: ``checks.min_samples``, below
    which a result's ``current_n`` gives a rule with ``above`` no verdict. ``on_enqueue`` is called
    after notifications were enqueued (the dispatcher's ``wake``)."""

    def __init__(self, store, alerts: AlertsSettings, min_samples: int, outbox: Outbox | None = None, metrics=None,
                 on_enqueue=None):
        self.store = store
        self.alerts = alerts
        self.min_samples = min_samples
        self.outbox = outbox or Outbox(store)
        self.metrics = metrics
        self.on_enqueue = on_enqueue
        self.states: dict[str, AlertState] = {}
        self._rules = {r.name: r for r in self.alerts.rules}
        self._stale = False  # an evaluation failed half way: reload from the store before the next

    # -- restart ----------------------------------------------------------------------

    def load(self) -> None:
        """Restore states, and finish the outbox writes of transitions a crash interrupted."""
        states = {}
        for aid, rule, model, group, state, since, resolved_at, updated_at in self.store.query_rows(
                f"SELECT {', '.join(_STATE_COLUMNS)} FROM alert_state FINAL"):
            states[aid] = (AlertState(aid, rule, model, group, state, utc(since),
                                      utc(resolved_at) if resolved_at else None), utc(updated_at))
        latest = self.store.query_rows(latest_sql())
        events = []
        for aid, event, ts, rule, severity, model, group, nid, summary, details in latest:
            ts = utc(ts)
            have = states.get(aid)
            if have is None or have[1] < ts:  # the event is newer: a crash before the state was written
                prev = have[0] if have else None
                if event == "fire":
                    st = AlertState(aid, rule, model, group, "firing", ts, prev.resolved_at if prev else None)
                else:
                    st = AlertState(aid, rule, model, group, "resolved", ts, ts)
                states[aid] = (st, ts)
            events.append({"timestamp": ts, "alert_id": aid, "rule": rule, "severity": severity, "model": model,
                           "group": group, "event": event, "notification_id": nid, "summary": summary,
                           "details": json.loads(details or "{}")})
        self.states = {aid: st for aid, (st, _) in states.items()}
        horizon = datetime.now(timezone.utc) - timedelta(seconds=self.alerts.retry.max_age_s)
        recent = [e for e in events if e["timestamp"] >= horizon and e["rule"] in self._rules]
        rows = [row for e in recent for row in self._outbox_rows(self._rules[e["rule"]], e)]
        if rows:
            added = self.outbox.enqueue(rows)
            if added:
                log.warning("re-enqueued %d notification(s) interrupted by the last stop", len(added))
                self._wake()
        firing = sum(1 for s in self.states.values() if s.state == "firing")
        log.info("alerts: %d rule(s), %d channel(s), %d firing", len(self._rules), len(self.alerts.channels), firing)

    # -- evaluation -------------------------------------------------------------------

    def evaluate(self, report) -> list[dict[str, Any]]:
        """Apply one check run; returns the alert events written (fire / resolve).

        When a write fails (the store is away) it raises; the next call first reloads the states
        from the store, as a restart would, so a transition already committed is not decided twice."""
        if self._stale:
            self.load()
            self._stale = False
        try:
            return self._evaluate(report)
        except BaseException:
            self._stale = True
            raise

    def _evaluate(self, report) -> list[dict[str, Any]]:
        now = to_ms(report.at)
        min_samples = self.min_samples
        written: list[dict[str, Any]] = []
        state_rows: list[AlertState] = []
        for rule in self.alerts.rules:
            matches = match_rule(rule, report, min_samples)
            keys = set(matches) | {(s.model, s.group) for s in self.states.values()
                                   if s.rule == rule.name and s.state in ("pending", "firing")}
            for model, group in sorted(keys):
                m = matches.get((model, group))
                if m is None or not m.evaluated:
                    continue  # no verdict this run: hold
                aid = alert_id(rule.name, model, group)
                st = self.states.get(aid) or AlertState(aid, rule.name, model, group, "inactive", now)
                new, event = self._step(rule, st, bool(m.hits), now)
                if event is not None:
                    written.append(self._transition(rule, new, event, m.hits, st, now))
                if new != st:
                    self.states[aid] = new
                    state_rows.append(new)
        if state_rows:
            self.store.insert("alert_state", [[s.alert_id, s.rule, s.model, s.group, s.state, s.since, s.resolved_at,
                                               now] for s in state_rows], _STATE_COLUMNS)
        if any(e["channels"] for e in written):
            self._wake()
        return written

    @staticmethod
    def _step(rule, st: AlertState, hit: bool, now: datetime) -> tuple[AlertState, str | None]:
        if hit:
            if st.state in ("inactive", "resolved"):
                st = replace(st, state="pending", since=now)
            if st.state == "pending":
                held = (now - st.since).total_seconds() >= rule.for_s
                cooled = st.resolved_at is None or (now - st.resolved_at).total_seconds() >= rule.cooldown_s
                if held and cooled:
                    return replace(st, state="firing", since=now), "fire"
            return st, None
        if st.state == "pending":
            return replace(st, state="resolved" if st.resolved_at else "inactive", since=now), None
        if st.state == "firing":
            return replace(st, state="resolved", since=now, resolved_at=now), "resolve"
        return st, None

    def _transition(self, rule, st: AlertState, event: str, hits, before: AlertState, now: datetime) -> dict:
        nid = notification_id(st.alert_id, event, now)
        details: dict[str, Any] = {"check": rule.check, "metric": rule.metric, "status": rule.status,
                                   "above": rule.above, "for_s": rule.for_s, "cooldown_s": rule.cooldown_s,
                                   "results": [result_summary(r) for r in hits]}
        if event == "fire":
            details["pending_since"] = iso(before.since if before.state == "pending" else now)
            details["fired_at"] = iso(now)
        else:
            details["fired_at"] = iso(before.since)
        channels = list(rule.channels) if event == "fire" or rule.send_resolved else []
        details["channels"] = channels
        ev = {"timestamp": now, "alert_id": st.alert_id, "rule": rule.name, "severity": rule.severity,
              "model": st.model, "group": st.group, "event": event, "notification_id": nid,
              "summary": describe(rule, st.model, st.group, hits, event), "details": details}
        self._write_event(ev)  # the commit point
        self.outbox.enqueue(self._outbox_rows(rule, ev))
        if self.metrics is not None:
            (self.metrics.alerts_fired.labels(rule.name, rule.severity) if event == "fire"
             else self.metrics.alerts_resolved.labels(rule.name)).inc()
        if event == "fire":
            log.warning("alert fired: %s (notifying %s)", ev["summary"], ", ".join(channels) or "no channel")
        else:
            log.info("alert resolved: %s (notifying %s)", ev["summary"], ", ".join(channels) or "no channel")
        return {**ev, "channels": channels}

    def _write_event(self, ev: dict[str, Any]) -> None:
        self.store.insert("alert_events", [[ev[c] if c != "details" else json.dumps(ev[c], default=str)
                                            for c in EVENT_COLUMNS]], EVENT_COLUMNS,
                          settings={"insert_deduplication_token": "alert_event:" + ev["notification_id"]})

    def _outbox_rows(self, rule, ev: dict[str, Any]) -> list[OutboxRow]:
        if ev["event"] == "resolve" and not rule.send_resolved:
            return []
        return [OutboxRow.new(ev["notification_id"], ch, ev["alert_id"], ev["event"], ev["timestamp"],
                              build_payload(self.alerts.channels[ch].type, ev, self.alerts.source))
                for ch in rule.channels if ch in self.alerts.channels]

    def _wake(self) -> None:
        if self.on_enqueue is not None:
            self.on_enqueue()

    # -- test notifications -----------------------------------------------------------

    def enqueue_test(self, channel: str, now: datetime | None = None) -> OutboxRow:
        """A test notification to one channel: an ``alert_events`` row (event ``test``) and its outbox row."""
        if channel not in self.alerts.channels:
            from monitor.errors import ConfigError
            raise ConfigError(f"no alert channel {channel!r}; configured: "
                              f"{', '.join(sorted(self.alerts.channels)) or 'none (see alerts.channels)'}")
        now = to_ms(now or datetime.now(timezone.utc))
        nid = uuid.uuid4().hex
        ev = {"timestamp": now, "alert_id": f"test:{channel}", "rule": "test", "severity": "info", "model": "",
              "group": "", "event": "test", "notification_id": nid,
              "summary": f"Test notification from {self.alerts.source} to channel {channel}",
              "details": {"check": "", "metric": "", "results": [], "channels": [channel]}}
        self._write_event(ev)
        row = OutboxRow.new(nid, channel, ev["alert_id"], "test", now,
                            build_payload(self.alerts.channels[channel].type, ev, self.alerts.source))
        self.outbox.enqueue([row])
        return row
