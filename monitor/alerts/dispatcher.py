"""Delivers the outbox: one daemon thread, one request per due row, retries with backoff.

Outcomes of an attempt:

- 2xx: ``delivered``.
- 408, 429, 5xx, a timeout or a connection error: ``retry`` after exponential backoff with full
  jitter (``Retry-After`` honoured when longer), until ``alerts.retry.max_age_s`` after the
  notification was enqueued; then ``dead`` with the last error.
- any other status (4xx, a redirect: URLs are never followed away from the config): ``dead`` at once.

Per alert and channel, rows go out in order: a resolve waits until the fire before it is
delivered or dead. Stopping lets the attempt in flight finish; pending rows stay in the outbox
for the next start. A crash after the receiver's 2xx and before the outbox update sends that
notification again on restart, with the same ``Idempotency-Key`` (PagerDuty: the same
``dedup_key``), so receivers that dedupe by it see it once.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Protocol

from monitor.alerts.channels import render_request
from monitor.alerts.outbox import Outbox, OutboxRow
from monitor.backoff import full_jitter

__all__ = ["Dispatcher", "HttpSender", "Response", "Sender", "classify"]

log = logging.getLogger("monitor.alerts")


@dataclass
class Response:
    status: int | None
    """HTTP status, None when no response came (timeout, refused connection)."""
    error: str = ""
    retry_after: float | None = None


class Sender(Protocol):
    def send(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Response: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None  # a 3xx comes back as an HTTPError: the configured URL is the only one used


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


class HttpSender:
    """POST with urllib; the timeout bounds the connect and each read."""

    def __init__(self):
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=timeout) as r:
                r.read(65536)
                return Response(r.status)
        except urllib.error.HTTPError as exc:
            text = exc.read(300).decode("utf-8", "replace").strip() if exc.fp else ""
            return Response(exc.code, f"HTTP {exc.code}{': ' + text if text else ''}",
                            _retry_after(exc.headers.get("Retry-After") if exc.headers else None))
        except TimeoutError:
            return Response(None, f"timed out after {timeout:g}s")
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                return Response(None, f"timed out after {timeout:g}s")
            return Response(None, f"connection failed: {reason}")
        except OSError as exc:
            return Response(None, f"connection failed: {exc}")


def classify(resp: Response) -> str:
    """``delivered``, ``retry`` or ``dead`` for one response."""
    if resp.status is None:
        return "retry"
    if 200 <= resp.status < 300:
        return "delivered"
    if resp.status in (408, 429) or resp.status >= 500:
        return "retry"
    return "dead"


class Dispatcher:
    def __init__(self, outbox: Outbox, settings, metrics=None, sender: Sender | None = None):
        """``settings``: the ``alerts`` section."""
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics
        self.sender = sender or HttpSender()
        self._lock = threading.Lock()  # one pass (or one synchronous delivery) at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._due_in: float | None = None  # seconds until the soonest retry, from the last pass
        from monitor import __version__
        self._user_agent = f"llm-monitor/{__version__}"

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="monitor-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Safe without start(). The attempt in flight finishes; pending rows stay for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Look at the outbox now (new rows were enqueued)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the store may be away; the rows wait in the outbox
                log.exception("alert delivery pass failed; next try in %gs", self.settings.poll_interval_s)
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        return max(0.05, self._due_in) if self._due_in is not None else self.settings.poll_interval_s

    # -- delivery ---------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """One pass over the pending rows; returns how many were delivered."""
        with self._lock:
            return self._pass(now)

    def _pass(self, now: datetime | None) -> int:
        rows = self.outbox.pending()
        blocked: set[tuple[str, str]] = set()
        delivered = 0
        soonest: float | None = None
        for row in rows:
            if self._stop.is_set():
                break
            key = (row.alert_id, row.channel)
            if key in blocked:
                continue
            t = now or datetime.now(timezone.utc)
            if row.next_attempt_at > t:
                blocked.add(key)  # the rows after it for this alert and channel wait too
                wait = (row.next_attempt_at - t).total_seconds()
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            new = self._attempt(row, t)
            if new.status == "delivered":
                delivered += 1
            elif new.status == "pending":
                blocked.add(key)
                wait = max(0.0, (new.next_attempt_at - datetime.now(timezone.utc)).total_seconds())
                soonest = wait if soonest is None else min(soonest, wait)
        self._due_in = None if soonest is None else min(soonest, self.settings.poll_interval_s)
        self._update_gauge()
        return delivered

    def _update_gauge(self) -> None:
        if self.metrics is None:
            return
        counts = self.outbox.counts()
        for ch in set(self.settings.channels) | {c for c, _ in counts}:
            self.metrics.alert_outbox_pending.labels(ch).set(counts.get((ch, "pending"), 0))

    def deliver(self, notification_id: str, channel: str, deadline_s: float) -> OutboxRow | None:
        """Deliver one row now, retrying until delivered, dead or ``deadline_s`` has passed (then
        it is marked dead: for ``monitor alerts test``, which reports the outcome)."""
        end = time.monotonic() + deadline_s
        while True:
            with self._lock:
                row = self.outbox.get(notification_id, channel)
                if row is None or row.status != "pending":
                    return row
                now = datetime.now(timezone.utc)
                left = end - time.monotonic()
                if left <= 0:
                    new = self.outbox.update(row, now, status="dead", last_error=(
                        f"not delivered within {deadline_s:g}s: {row.last_error}"))
                    self._count(channel, "dead")
                    return new
                if row.next_attempt_at <= now:
                    row = self._attempt(row, now)
                    if row.status != "pending":
                        return row
                wait = (row.next_attempt_at - datetime.now(timezone.utc)).total_seconds()
            time.sleep(max(0.01, min(wait, end - time.monotonic())))

    def _count(self, channel: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.alert_notifications.labels(channel, outcome).inc()

    def _attempt(self, row: OutboxRow, now: datetime) -> OutboxRow:
        cfg = self.settings.channels.get(row.channel)
        attempt = row.attempts + 1
        if cfg is None:
            return self._finish(row, now, attempt, "dead", None,
                                f"channel {row.channel!r} is no longer in the config", 0.0)
        url, headers, body = render_request(cfg, row.payload, row.notification_id, user_agent=self._user_agent)
        t0 = time.monotonic()
        resp = self.sender.send(url, headers, body, cfg.timeout_s)
        ms = (time.monotonic() - t0) * 1000
        outcome = classify(resp)
        error = "" if outcome == "delivered" else (resp.error or f"HTTP {resp.status}")
        return self._finish(row, datetime.now(timezone.utc), attempt, outcome, resp.status, error, ms,
                            resp.retry_after)

    def _finish(self, row: OutboxRow, now: datetime, attempt: int, outcome: str, status: int | None, error: str,
                ms: float, retry_after: float | None = None) -> OutboxRow:
        r = self.settings.retry
        if outcome == "retry":
            delay = max(full_jitter(attempt, r.initial_s, r.max_s), retry_after or 0.0)
            next_at = now + timedelta(seconds=delay)
            if (next_at - row.created_at).total_seconds() > r.max_age_s:
                outcome = "dead"
                error = f"gave up after {attempt} attempts over {r.max_age_s:g}s: {error}"
        self.outbox.record_attempt(row, now, attempt, outcome, status, error, ms)
        self._count(row.channel, outcome)
        if outcome == "delivered":
            log.info("alert %s %s delivered to %s (attempt %d, %.0f ms)", row.event, row.notification_id,
                     row.channel, attempt, ms)
            return self.outbox.update(row, now, status="delivered", attempts=attempt, last_error="")
        if outcome == "retry":
            log.warning("alert %s %s to %s failed (attempt %d): %s; next attempt at %s", row.event,
                        row.notification_id, row.channel, attempt, error, next_at.isoformat(timespec="milliseconds"))
            return self.outbox.update(row, now, attempts=attempt, next_attempt_at=next_at, last_error=error)
        log.error("alert %s %s to %s is dead after %d attempts: %s", row.event, row.notification_id, row.channel,
                  attempt, error)
        return self.outbox.update(row, now, status="dead", attempts=attempt, last_error=error)
