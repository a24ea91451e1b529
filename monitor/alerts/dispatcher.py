"""Delivers the outbox: one lane (a daemon thread) per channel, one request per due row, retries
with backoff.

Outcomes of an attempt, by the error tree (:mod:`monitor.errors`) the sender speaks (see
:mod:`monitor.alerts.sender`):

- a :class:`~monitor.alerts.sender.Response` (2xx): ``delivered``.
- a :class:`~monitor.errors.RetryableError` (408, 429, 5xx, a timeout, a connection error, an
  answer that is not HTTP), or a sender that raised anything outside the tree: ``retry`` after
  exponential backoff with full jitter from the stored attempt count
  (:func:`monitor.backoff.retry_delay`; ``Retry-After`` of any form honoured when longer, capped at
  ``alerts.retry.max_s``), until ``alerts.retry.max_age_s`` after the notification was enqueued;
  then ``dead`` with the last error.
- a :class:`~monitor.errors.PermanentError` (any other status: 4xx, a redirect, URLs are never
  followed away from the config), or a row whose request cannot be built (a corrupt payload, a
  channel no longer configured): ``dead`` at once.

Isolation. Each channel has its own lane, so a channel that hangs, fails or answers garbage
delays no other channel. Within a lane, each attempt runs under a deadline (the channel's
``timeout_s`` plus a grace second) and its failure is that row's failure only: the next rows are
attempted in the same pass. An attempt past its deadline is abandoned (its thread is left to
finish); while two of a channel's attempts hang, the next ones fail at once instead of piling up
threads. Exceptions inside a pass are logged and counted (``monitor_alert_notifications``
outcome ``error``, and :attr:`Dispatcher.errors`); a store error ends the pass, and the rows
wait in the outbox.

Per alert and channel, rows go out in order: a resolve waits until the fire before it is
delivered or dead. Stopping lets the attempts in flight finish (at most their deadline); pending
rows stay in the outbox for the next start. A crash after the receiver's 2xx and before the
outbox update sends that notification again on restart, with the same ``Idempotency-Key``
(PagerDuty: the same ``dedup_key``), so receivers that dedupe by it see it once; so may an
abandoned attempt that was answered after its deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from monitor.alerts.channels import channel_secrets, render_request
from monitor.alerts.outbox import Outbox, OutboxRow
from monitor.alerts.sender import (HttpSender, NotDelivered, Refused, Response, Sender, parse_retry_after,
                                   raise_for_status)
from monitor.auth import scrub
from monitor.backoff import retry_delay
from monitor.errors import PermanentError, RetryableError, StoreError

if TYPE_CHECKING:
    from monitor.config import AlertsSettings

__all__ = ["Dispatcher", "HttpSender", "NotDelivered", "Refused", "Response", "Sender", "parse_retry_after"]

log = logging.getLogger("monitor.alerts")

DEADLINE_GRACE_S = 1.0
"""An attempt is abandoned this long after its channel's ``timeout_s`` (urllib's timeout bounds
each read, not the whole answer)."""
MAX_HANGING = 2
"""Abandoned attempts per channel still running before the next ones fail without a request."""
_MAX_DELAY_S = 365 * 86400.0  # whatever the config says, a retry time stays a representable date


@dataclass
class _Lane:
    """The rows of one channel (``name``), or of every channel no longer configured (None)."""

    name: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one pass or synchronous delivery at a time
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    due_in: float | None = None  # seconds until the soonest retry, from the last pass
    hanging: list[threading.Thread] = field(default_factory=list)


class Dispatcher:
    def __init__(self, outbox: Outbox, settings: AlertsSettings, metrics=None, sender: Sender | None = None):
        """``settings``: the ``alerts`` section."""
        self.outbox = outbox
        self.settings = settings
        self.metrics = metrics
        self.sender = sender or HttpSender()
        self.errors: Counter[str] = Counter()
        """Exceptions contained, by channel (``""``: a pass of the lane of unconfigured channels)."""
        self._stop = threading.Event()
        self._lanes: dict[str | None, _Lane] = {name: _Lane(name) for name in settings.channels}
        self._lanes[None] = _Lane(None)
        from monitor import __version__
        self._user_agent = f"llm-monitor/{__version__}"

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        for lane in self._lanes.values():
            lane.thread = threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                           name=f"monitor-alerts-{lane.name or '(unconfigured)'}")
            lane.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Safe without start(). The attempts in flight finish (within their deadline); pending rows
        stay for the next start."""
        self._stop.set()
        for lane in self._lanes.values():
            lane.wake.set()
        end = time.monotonic() + timeout
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(max(0.0, end - time.monotonic()))
                lane.thread = None

    def wake(self) -> None:
        """Look at the outbox now (new rows were enqueued)."""
        for lane in self._lanes.values():
            lane.wake.set()

    def _loop(self, lane: _Lane) -> None:
        while not self._stop.is_set():
            lane.wake.clear()  # a wake from now on (rows enqueued during the pass) starts another pass
            try:
                with lane.lock:
                    self._pass(lane, None)
            except Exception as exc:  # the store may be away; the rows wait in the outbox
                lane.due_in = None
                self._error(lane.name, exc, "alert delivery pass failed; next try in "
                            f"{self.settings.poll_interval_s:g}s")
            lane.wake.wait(max(0.05, lane.due_in) if lane.due_in is not None else self.settings.poll_interval_s)

    def _lane(self, channel: str) -> _Lane:
        return self._lanes.get(channel) or self._lanes[None]

    def _error(self, channel: str | None, exc: BaseException, message: str) -> None:
        """Log and count an exception contained inside a pass."""
        self.errors[channel or ""] += 1
        self._count(channel or "", "error")
        log.error("%s: %s: %s", message, type(exc).__name__, exc, exc_info=exc)

    # -- delivery ---------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """One pass over the pending rows of every lane, one lane after the other; returns how many
        were delivered."""
        delivered = 0
        for lane in self._lanes.values():
            with lane.lock:
                delivered += self._pass(lane, now)
        return delivered

    def _pending(self, lane: _Lane) -> list[OutboxRow]:
        if lane.name is None:
            return self.outbox.pending([n for n in self._lanes if n is not None], exclude=True)
        return self.outbox.pending([lane.name])

    def _pass(self, lane: _Lane, now: datetime | None) -> int:
        rows = self._pending(lane)
        blocked: set[tuple[str, str]] = set()  # (alert, channel) whose earlier row is not delivered or dead
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
            try:
                new = self._attempt(lane, row, t)
            except StoreError:
                raise  # the outbox cannot be written: end the pass, every row waits
            except Exception as exc:  # a bug on one row: the others still go out
                blocked.add(key)
                self._error(row.channel, exc, f"alert {row.event} {row.notification_id} to {row.channel}: "
                                              "the attempt failed inside the monitor")
                continue
            if new.status == "delivered":
                delivered += 1
            elif new.status == "pending":
                blocked.add(key)
                wait = max(0.0, (new.next_attempt_at - datetime.now(timezone.utc)).total_seconds())
                soonest = wait if soonest is None else min(soonest, wait)
        lane.due_in = None if soonest is None else min(soonest, self.settings.poll_interval_s)
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
        it is marked dead: for ``monitor alerts test``, which reports the outcome). When the
        dispatcher stops meanwhile, the row is returned as it is (still pending, for the next start)."""
        lane = self._lane(channel)
        end = time.monotonic() + deadline_s
        while True:
            with lane.lock:
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
                    row = self._attempt(lane, row, now)
                    if row.status != "pending":
                        return row
                wait = (row.next_attempt_at - datetime.now(timezone.utc)).total_seconds()
            if self._stop.wait(max(0.01, min(wait, end - time.monotonic()))):
                return row

    def _count(self, channel: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.alert_notifications.labels(channel, outcome).inc()

    def _attempt(self, lane: _Lane, row: OutboxRow, now: datetime) -> OutboxRow:
        """One attempt; whatever the channel or the sender does, the row's outcome is recorded.
        Only a failing outbox write raises."""
        cfg = self.settings.channels.get(row.channel)
        attempt = row.attempts + 1
        if cfg is None:
            return self._finish(row, now, attempt, None, 0.0,
                                Refused(f"channel {row.channel!r} is no longer in the config"))
        try:
            url, headers, body = render_request(cfg, row.payload, row.notification_id, user_agent=self._user_agent)
        except Exception as exc:  # a corrupt stored payload: no attempt can succeed
            self._error(row.channel, exc, f"alert {row.notification_id} to {row.channel}: cannot build the request")
            why = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
            return self._finish(row, now, attempt, None, 0.0, Refused(f"cannot build the request: {why}"))
        t0 = time.monotonic()
        try:
            status, failure = self._send(lane, row, url, headers, body, cfg.timeout_s).status, None
        except (NotDelivered, Refused) as exc:
            status, failure = exc.status, exc
        ms = (time.monotonic() - t0) * 1000
        return self._finish(row, datetime.now(timezone.utc), attempt, status, ms, failure)

    def _send(self, lane: _Lane, row: OutboxRow, url: str, headers: dict[str, str], body: bytes,
              timeout: float) -> Response:
        """``sender.send`` under a deadline, in a thread of its own: the :class:`Response` of a
        delivery, else :class:`NotDelivered` or :class:`Refused` raised, well-formed whatever the
        sender did (raised something else, returned something else, hung)."""
        lane.hanging = [t for t in lane.hanging if t.is_alive()]
        if len(lane.hanging) >= MAX_HANGING:
            raise NotDelivered(f"not sent: {len(lane.hanging)} earlier requests to this channel are still hanging")
        box: dict[str, object] = {}

        def run() -> None:
            try:
                box["resp"] = self.sender.send(url, headers, body, timeout)
            except BaseException as exc:  # reported by the dispatcher's thread
                box["exc"] = exc

        deadline = timeout + DEADLINE_GRACE_S
        t = threading.Thread(target=run, name=f"monitor-alerts-send-{row.channel}", daemon=True)
        t.start()
        t.join(deadline)
        if t.is_alive():
            lane.hanging.append(t)
            raise NotDelivered(f"no complete answer within {deadline:g}s (request abandoned)")
        if "exc" in box:
            exc = box["exc"]
            if isinstance(exc, RetryableError):
                raise NotDelivered(_message(exc), _status(getattr(exc, "status", None)),
                                   parse_retry_after(exc.retry_after)) from None
            if isinstance(exc, PermanentError):
                raise Refused(_message(exc), _status(getattr(exc, "status", None))) from None
            self._error(row.channel, exc, f"alert {row.notification_id} to {row.channel}: the sender raised")
            raise NotDelivered(f"the sender raised {type(exc).__name__}: {str(exc)[:300]}") from None
        resp = box.get("resp")
        if not isinstance(resp, Response):
            raise NotDelivered(f"the sender returned {type(resp).__name__}, not a Response")
        status = resp.status
        if status is not None and _status(status) is None:
            raise NotDelivered(f"invalid HTTP status {status!r}")
        # a sender may still return the answer of a failed attempt: it is read the same way
        return raise_for_status(Response(status, str(resp.error or "")[:2000], parse_retry_after(resp.retry_after)))

    def _finish(self, row: OutboxRow, now: datetime, attempt: int, status: int | None, ms: float,
                failure: NotDelivered | Refused | None) -> OutboxRow:
        """Record the attempt and the row's next state: delivered (no ``failure``), retried later
        (NotDelivered, until ``max_age_s``) or dead."""
        r = self.settings.retry
        cfg = self.settings.channels.get(row.channel)
        error = "" if failure is None else str(failure)
        # an error may echo what was sent (a receiver quoting its input, a refused header value):
        # it is logged and stored, so the channel's secrets are taken out first
        error = scrub(error, channel_secrets(cfg))[:2000] if cfg is not None else error[:2000]
        if failure is None:
            outcome = "delivered"
        elif isinstance(failure, RetryableError):
            outcome = "retry"
            delay = min(retry_delay(attempt, r.initial_s, r.max_s, failure.retry_after), _MAX_DELAY_S)
            age = (now - row.created_at).total_seconds()
            if age + delay > r.max_age_s:
                outcome = "dead"
                error = f"gave up after {attempt} attempts over {r.max_age_s:g}s: {error}"[:2000]
            else:
                next_at = now + timedelta(seconds=delay)
        else:
            outcome = "dead"
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


def _status(value: object) -> int | None:
    """An HTTP status a sender reported, or None for anything that is not one."""
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 999:
        return value
    return None


def _message(exc: BaseException) -> str:
    """What a failure says, for the outbox: its message, else its status, else its type."""
    text = str(exc)[:2000]
    if text:
        return text
    status = _status(getattr(exc, "status", None))
    return f"HTTP {status}" if status is not None else type(exc).__name__
