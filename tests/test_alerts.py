"""Alerts: rules over check results -> alert events -> durable outbox -> a real local HTTP receiver.

Every delivery test counts what a real receiver (http.server on 127.0.0.1) answered 2xx, by
Idempotency-Key: each notification must arrive exactly once, whatever failed in between.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import MONITOR, chdb_query, free_port, wait_until

from monitor.alerts import verify
from monitor.alerts.service import AlertService, list_alerts
from monitor.checks.base import Result, Scope, Window
from monitor.checks.runner import RunReport, ScopeReport
from monitor.config import AlertsSettings, SloThresholds, load
from monitor.errors import ConfigError

SECRET = "s3cret-key"
# check runs happen "now"; the tests play runs from half an hour ago on, so none is in the future
T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)


# -- a real receiver ------------------------------------------------------------------

class Receiver:
    """Answers POSTs by a plan (a status, ``(status, {header: value})``, or "timeout": answer only
    after the client gave up), then ``default``; records every request with what it answered."""

    def __init__(self, default=200, plan=(), delay_s: float = 1.0):
        self.default, self.plan, self.delay_s = default, list(plan), delay_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    action = receiver.plan.pop(0) if receiver.plan else receiver.default
                    rec = {"path": self.path, "headers": dict(self.headers), "body": body, "answer": action,
                           "at": time.time(), "verified": verify(SECRET, self.headers, body)}
                    receiver.requests.append(rec)
                if action == "timeout":
                    time.sleep(receiver.delay_s)
                    action = 200  # too late: the sender timed out and must not count this
                status, headers = action if isinstance(action, tuple) else (action, {})
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def ok(self, path: str | None = None) -> list[dict]:
        """Requests answered 2xx in time, i.e. deliveries."""
        with self.lock:
            return [r for r in self.requests if isinstance(r["answer"], int) and 200 <= r["answer"] < 300
                    and (path is None or r["path"] == path)]

    def keys(self, path: str | None = None) -> list[str]:
        return [r["headers"]["Idempotency-Key"] for r in self.ok(path)]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kw):
        r = Receiver(**kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


# -- helpers --------------------------------------------------------------------------

def with_alerts(settings, channels: dict, rules: list, min_samples: int = 1, **retry):
    alerts = AlertsSettings(channels=channels, rules=rules, poll_interval_s=0.1,
                            retry={"initial_s": 0.05, "max_s": 0.2, "max_age_s": 3600, **retry})
    return settings.model_copy(update={"alerts": alerts, "checks": settings.checks.model_copy(
        update={"min_samples": min_samples})})


def webhook(url: str, **kw) -> dict:
    return {"type": "webhook", "url": url, "secret": SECRET, "timeout_s": 0.4, **kw}


def rule(name="drift", check="feature_drift", channels=("hook",), **kw) -> dict:
    return {"name": name, "check": check, "channels": list(channels), **kw}


def report(at: datetime, results: dict[str, list[Result]]) -> RunReport:
    cur = Window(at - timedelta(hours=1), at)
    ref = Window(at - timedelta(hours=25), at - timedelta(hours=24), "day")
    return RunReport("r" + at.strftime("%H%M%S"), at,
                     [ScopeReport(Scope(model), cur, ref, rs) for model, rs in results.items()])


def drift(status: str, metric="latency_ms", value=0.3) -> Result:
    return Result(check="feature_drift", metric=metric, status=status, value=value, threshold=0.1,
                  method="wasserstein", current_n=500, reference_n=500, details={"examples": ["secret prompt"]})


def events(store) -> list[tuple]:
    return store.query_rows("SELECT event, model, notification_id FROM alert_events ORDER BY timestamp, event")


def outbox(store) -> list[tuple]:
    return store.query_rows("SELECT notification_id, channel, event, status, attempts FROM alert_outbox FINAL "
                            "ORDER BY created_at, notification_id")


def drained(store) -> bool:
    return all(r[3] != "pending" for r in outbox(store))


# -- signing --------------------------------------------------------------------------

def test_signature_verifies_and_tampering_or_replay_is_rejected(store, settings, receiver):
    rcv = receiver()
    s = with_alerts(settings, {"hook": webhook(rcv.url())}, [rule()])
    service = AlertService(store, s.alerts, s.checks.min_samples)
    out = service.send_test("hook", wait_s=10)
    assert out["status"] == "delivered" and out["attempts"] == 1
    (req,) = rcv.ok()
    assert req["verified"], req["headers"]
    h, body = req["headers"], req["body"]
    assert h["Idempotency-Key"] == out["notification_id"] == json.loads(body)["idempotency_key"]
    assert h["X-Monitor-Signature"].startswith("v1=")
    ts = int(h["X-Monitor-Timestamp"])
    assert verify(SECRET, h, body, now=ts + 299)
    assert not verify(SECRET, h, body.replace(b"test", b"tEst"))  # tampered body
    assert not verify("other-secret", h, body)
    assert not verify(SECRET, h, body, now=ts + 301)  # a replay after the tolerance
    assert not verify(SECRET, {**h, "X-Monitor-Timestamp": str(ts + 1)}, body)  # re-stamped
    assert not verify(SECRET, {k: v for k, v in h.items() if k != "X-Monitor-Signature"}, body)
    assert verify(SECRET, {k.lower(): v for k, v in h.items()}, body)  # header names are case-insensitive
    assert verify(SECRET, {**h, "X-Monitor-Signature": "v1=00," + h["X-Monitor-Signature"]}, body)  # rotation
    assert store.query_rows("SELECT event, rule FROM alert_events") == [("test", "test")]


# -- retries --------------------------------------------------------------------------

def test_500s_and_a_timeout_are_retried_and_delivered_exactly_once(store, settings, receiver):
    flaky = receiver(plan=[500, 500])
    slow = receiver(plan=["timeout"], delay_s=1.0)
    s = with_alerts(settings, {"flaky": webhook(flaky.url()), "slow": webhook(slow.url())},
                    [rule(channels=("flaky", "slow"), severity="critical")])
    service = AlertService(store, s.alerts, s.checks.min_samples)
    service.start()
    try:
        fired = service.manager.evaluate(report(T0, {"llama": [drift("fail"), drift("ok", "ttft_ms")]}))
        assert [e["event"] for e in fired] == ["fire"]
        wait_until(lambda: drained(store), timeout=20, message="outbox drained")
        time.sleep(0.5)  # nothing more may arrive
    finally:
        service.stop()
    nid = fired[0]["notification_id"]
    assert flaky.keys() == [nid] and slow.keys() == [nid]
    assert [r["answer"] for r in flaky.requests] == [500, 500, 200]
    assert [r["answer"] for r in slow.requests] == ["timeout", 200]
    assert all(r["verified"] for r in flaky.requests + slow.requests)
    assert {r[1]: (r[3], r[4]) for r in outbox(store)} == {"flaky": ("delivered", 3), "slow": ("delivered", 2)}
    attempts = store.query_rows("SELECT channel, attempt, outcome, http_status FROM alert_deliveries "
                                "ORDER BY channel, attempt")
    assert attempts == [("flaky", 1, "retry", 500), ("flaky", 2, "retry", 500), ("flaky", 3, "delivered", 200),
                        ("slow", 1, "retry", None), ("slow", 2, "delivered", 200)]
    body = json.loads(flaky.ok()[0]["body"])
    assert body["event"] == "fire" and body["alert"]["status"] == "firing" and body["alert"]["model"] == "llama"
    assert body["alert"]["severity"] == "critical"
    assert [r["metric"] for r in body["results"]] == ["latency_ms"]  # the result that triggered it
    assert "examples" not in body["results"][0]["details"]  # example prompts stay in ClickHouse


def test_a_4xx_is_dead_at_once_and_an_outage_past_max_age_is_dead(store, settings, receiver):
    rejecting = receiver(default=400)
    down = receiver(default=503)
    s = with_alerts(settings, {"rej": webhook(rejecting.url()), "down": webhook(down.url())},
                    [rule(channels=("rej", "down"))], max_age_s=1.0)
    service = AlertService(store, s.alerts, s.checks.min_samples)
    service.start()
    try:
        service.manager.evaluate(report(datetime.now(timezone.utc), {"llama": [drift("fail")]}))
        wait_until(lambda: drained(store), timeout=20, message="outbox drained")
    finally:
        service.stop()
    rows = {r[1]: r for r in outbox(store)}
    assert rows["rej"][3:] == ("dead", 1) and len(rejecting.requests) == 1
    assert rows["down"][3] == "dead" and rows["down"][4] == len(down.requests) >= 1
    errors = dict(store.query_rows("SELECT channel, last_error FROM alert_outbox FINAL"))
    assert "HTTP 400" in errors["rej"] and "gave up after" in errors["down"]
    listed = list_alerts(store)
    assert {d["channel"] for d in listed["dead"]} == {"rej", "down"}
    assert [a["model"] for a in listed["firing"]] == ["llama"]


def test_a_429_waits_its_retry_after_a_400_is_refused_and_a_waiting_delivery_ends_with_the_dispatcher(
        store, settings, receiver):
    """The sender speaks the error tree (a retryable error carrying Retry-After, a permanent one);
    the dispatcher waits at least the hint, not its own shorter backoff."""
    from monitor.alerts.sender import HttpSender, NotDelivered, Refused
    from monitor.errors import PermanentError, RetryableError

    probe = receiver(plan=[(429, {"Retry-After": "1"}), 400])
    with pytest.raises(NotDelivered) as busy:
        HttpSender().send(probe.url(), {}, b"{}", 2.0)
    assert isinstance(busy.value, RetryableError) and (busy.value.status, busy.value.retry_after) == (429, 1.0)
    with pytest.raises(Refused) as bad:
        HttpSender().send(probe.url(), {}, b"{}", 2.0)
    assert isinstance(bad.value, PermanentError) and bad.value.status == 400 and "HTTP 400" in str(bad.value)
    assert HttpSender().send(probe.url(), {}, b"{}", 2.0).status == 200

    rcv = receiver(plan=[(429, {"Retry-After": "1"})])
    s = with_alerts(settings, {"hook": webhook(rcv.url())}, [rule()], max_s=5.0)  # backoff from 0.05 s
    out = AlertService(store, s.alerts, s.checks.min_samples).send_test("hook", wait_s=20)
    assert (out["status"], out["attempts"]) == ("delivered", 2)
    first, second = rcv.requests
    assert second["at"] - first["at"] >= 1.0  # Retry-After honoured
    assert store.query_rows("SELECT attempt, outcome, http_status FROM alert_deliveries ORDER BY attempt") == [
        (1, "retry", 429), (2, "delivered", 200)]

    busy_rcv = receiver(default=(503, {"Retry-After": "30"}))
    s = with_alerts(settings, {"busy": webhook(busy_rcv.url())}, [rule(channels=("busy",))], max_s=60.0)
    service = AlertService(store, s.alerts, s.checks.min_samples)
    threading.Timer(1.0, service.stop).start()
    t0 = time.monotonic()
    out = service.send_test("busy", wait_s=60)
    assert time.monotonic() - t0 < 10 and (out["status"], out["attempts"]) == ("pending", 1)


# -- hostile receivers ----------------------------------------------------------------

RETRY_AFTERS = ["1e12", "inf", "nan", "-5", "garbage", "", "3600", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT",
                "Mon, 01 Jan 10000 00:00:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"]


def test_retry_after_of_any_form_is_parsed_without_raising():
    from monitor.alerts.sender import MAX_RETRY_AFTER_S, parse_retry_after

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    got = {v[:12]: parse_retry_after(v, now) for v in RETRY_AFTERS}
    assert got == {"1e12": MAX_RETRY_AFTER_S, "inf": None, "nan": None, "-5": 0.0, "garbage": None, "": None,
                   "3600": 3600.0, "9" * 12: MAX_RETRY_AFTER_S, "Fri, 31 Dec ": MAX_RETRY_AFTER_S,
                   "Mon, 01 Jan ": None, "Wed, 21 Oct ": 0.0}
    assert parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now) == 120.0
    assert parse_retry_after(" 7 ", now) == 7.0 and parse_retry_after("1.5", now) == 1.5
    assert parse_retry_after(None) is None and parse_retry_after(float("inf")) is None
    assert parse_retry_after(10 ** 400) == MAX_RETRY_AFTER_S and parse_retry_after(-3) == 0.0


def test_every_form_of_retry_after_is_capped_at_max_s_and_the_notification_delivered(store, settings, receiver):
    rcv = receiver(plan=[(503, {"Retry-After": v}) for v in RETRY_AFTERS])
    s = with_alerts(settings, {"hook": webhook(rcv.url())}, [rule()])  # retry.max_s 0.2
    service = AlertService(store, s.alerts, s.checks.min_samples)
    service.start()
    try:
        fired = service.manager.evaluate(report(T0, {"llama": [drift("fail")]}))
        wait_until(lambda: drained(store), timeout=30, message="outbox drained")
    finally:
        service.stop()
    assert rcv.keys() == [fired[0]["notification_id"]]
    assert [r["answer"] for r in rcv.requests][-1] == 200 and len(rcv.requests) == len(RETRY_AFTERS) + 1
    rows = store.query_rows("SELECT attempt, outcome, http_status, timestamp FROM alert_deliveries ORDER BY attempt")
    assert [r[:3] for r in rows] == [(i + 1, "retry", 503) for i in range(len(RETRY_AFTERS))] + [
        (len(RETRY_AFTERS) + 1, "delivered", 200)]
    scheduled = store.query_rows("SELECT attempts, status FROM alert_outbox FINAL")
    assert scheduled == [(len(RETRY_AFTERS) + 1, "delivered")]
    gaps = [(b[3] - a[3]).total_seconds() for a, b in zip(rows, rows[1:])]
    assert max(gaps) < 2.0, gaps  # 0.2 s cap plus a pass; an honoured "3600" or "1e12" would be far longer


def test_a_huge_retry_after_goes_dead_at_max_age_and_holds_back_no_other_notification(store, settings, receiver):
    from monitor.selfmetrics import SelfMetrics

    bad = receiver(default=(503, {"Retry-After": "1e12"}))
    good = receiver()
    s = with_alerts(settings, {"bad": webhook(bad.url()), "good": webhook(good.url())},
                    [rule(channels=("bad", "good"))], max_age_s=2.0)
    metrics = SelfMetrics()
    service = AlertService(store, s.alerts, s.checks.min_samples, metrics)
    now = datetime.now(timezone.utc)
    first = service.manager.evaluate(report(now - timedelta(milliseconds=100), {"a": [drift("fail")]}))
    second = service.manager.evaluate(report(now, {"a": [drift("fail")], "b": [drift("fail")]}))
    assert [e["model"] for e in first + second] == ["a", "b"]
    service.start()
    try:
        wait_until(lambda: drained(store), timeout=30, message="outbox drained")
    finally:
        service.stop()
    assert sorted(good.keys()) == sorted(e["notification_id"] for e in first + second)  # each once
    rows = store.query_rows("SELECT notification_id, status, attempts, last_error FROM alert_outbox FINAL "
                            "WHERE channel = 'bad' ORDER BY created_at")
    assert [r[1] for r in rows] == ["dead", "dead"]
    for nid, _, attempts, error in rows:
        assert attempts >= 3 and attempts == sum(r["headers"]["Idempotency-Key"] == nid for r in bad.requests)
        assert error.startswith(f"gave up after {attempts} attempts over 2s: HTTP 503"), error
    sample = metrics.registry.get_sample_value
    assert sample("monitor_alert_notifications_total", {"channel": "good", "outcome": "delivered"}) == 2
    assert sample("monitor_alert_notifications_total", {"channel": "bad", "outcome": "dead"}) == 2
    assert sample("monitor_alert_notifications_total", {"channel": "bad", "outcome": "error"}) is None
    assert service.dispatcher.errors == {}


class RawServer:
    """A TCP server that is not a well-behaved HTTP server: ``mode`` "garbage" answers a non-HTTP
    line and closes; "drip" sends a status line, then one byte of a header every 0.1 s (every
    read completes within any socket timeout, so only a deadline on the whole answer ends it)."""

    def __init__(self, mode: str):
        import socket

        self.mode, self.stop, self.accepted = mode, threading.Event(), 0
        self.sock = socket.create_server(("127.0.0.1", free_port()))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                conn.recv(65536)
                if self.mode == "garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n")
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                while not self.stop.wait(0.1):
                    conn.sendall(b"a")
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_hanging_a_garbage_and_a_raising_channel_hold_back_nothing(store, settings, receiver):
    """Per notification and per channel isolation: each bad one ends dead with its own error, and
    every other notification is delivered, the first one while the hanging channel still hangs."""
    from monitor.alerts.outbox import OutboxRow
    from monitor.alerts.dispatcher import HttpSender
    from monitor.selfmetrics import SelfMetrics

    good = receiver()
    hang, garbage = RawServer("drip"), RawServer("garbage")

    class Raising(HttpSender):
        """Raises for alert a's notification to /flaky, sends everything else."""

        def send(self, url, headers, body, timeout):
            if url.endswith("/flaky") and b'"model":"a"' in body:
                raise RuntimeError("boom in the sender")
            return super().send(url, headers, body, timeout)

    channels = {"a-hang": webhook(hang.url()), "b-garbage": webhook(garbage.url()),
                "c-flaky": webhook(good.url("/flaky")), "good": webhook(good.url("/good")),
                "d-pd": {"type": "pagerduty", "url": good.url("/pd"), "routing_key": "R"}}
    s = with_alerts(settings, channels, [rule(channels=("a-hang", "b-garbage", "c-flaky", "good"))], max_age_s=2.0)
    metrics = SelfMetrics()
    service = AlertService(store, s.alerts, s.checks.min_samples, metrics, sender=Raising())
    now = datetime.now(timezone.utc)
    fired = service.manager.evaluate(report(now, {"a": [drift("fail")], "b": [drift("fail")]}))
    nids = {e["model"]: e["notification_id"] for e in fired}
    # a row whose stored payload is corrupt: rendering its PagerDuty request raises
    service.outbox.enqueue([OutboxRow.new("corrupt", "d-pd", "x", "fire", now, "{not json")])
    hanging_before = {t for t in threading.enumerate() if t.name.startswith("monitor-alerts-send")}
    service.start()
    try:
        wait_until(lambda: len(good.keys("/good")) == 2, timeout=20, message="the good channel's deliveries")
        delivered_at = max(r["at"] for r in good.ok("/good"))
        wait_until(lambda: drained(store), timeout=30, message="outbox drained")
        hanging = {t for t in threading.enumerate() if t.name == "monitor-alerts-send-a-hang"} - hanging_before
        assert 1 <= len(hanging) <= 2  # abandoned attempts are bounded
    finally:
        service.stop()
        hang.close()
        garbage.close()
    assert sorted(good.keys("/good")) == sorted(nids.values())
    assert good.keys("/flaky") == [nids["b"]] and good.ok("/pd") == []
    first_hang_end = store.query_rows("SELECT min(timestamp) FROM alert_deliveries WHERE channel = 'a-hang'")[0][0]
    assert delivered_at < first_hang_end.replace(tzinfo=timezone.utc).timestamp()  # not behind the hang

    rows = {(r[0], r[1]): r[2:] for r in store.query_rows(
        "SELECT channel, notification_id, status, attempts, last_error FROM alert_outbox FINAL")}
    for model in ("a", "b"):
        status, attempts, error = rows[("a-hang", nids[model])]
        assert status == "dead" and attempts >= 1 and "gave up after" in error
        assert "no complete answer within 1.4s (request abandoned)" in error or "still hanging" in error, error
        status, attempts, error = rows[("b-garbage", nids[model])]
        assert status == "dead" and attempts >= 2 and "bad response: BadStatusLine" in error, error
    assert rows[("c-flaky", nids["b"])][:2] == ("delivered", 1)
    status, attempts, error = rows[("c-flaky", nids["a"])]
    assert status == "dead" and "the sender raised RuntimeError: boom in the sender" in error and attempts >= 2
    status, attempts, error = rows[("d-pd", "corrupt")]
    assert (status, attempts) == ("dead", 1) and error.startswith("cannot build the request: JSONDecodeError")
    # contained exceptions are counted: every raising attempt, and the corrupt row once
    sample = metrics.registry.get_sample_value
    assert sample("monitor_alert_notifications_total", {"channel": "c-flaky", "outcome": "error"}) == attempts_of(
        store, "c-flaky", nids["a"])
    assert sample("monitor_alert_notifications_total", {"channel": "d-pd", "outcome": "error"}) == 1
    assert service.dispatcher.errors == {"c-flaky": attempts_of(store, "c-flaky", nids["a"]), "d-pd": 1}
    assert hang.accepted >= 1 and garbage.accepted == sum(rows[("b-garbage", n)][1] for n in nids.values())


def attempts_of(store, channel: str, nid: str) -> int:
    return store.query_rows("SELECT count() FROM alert_deliveries WHERE channel = {c:String} AND "
                            "notification_id = {n:String}", {"c": channel, "n": nid})[0][0]


# -- restart --------------------------------------------------------------------------

def test_restart_with_pending_notifications_loses_and_duplicates_nothing(store, settings, receiver):
    rcv = receiver(default=503)  # the receiver is down
    s = with_alerts(settings, {"hook": webhook(rcv.url())}, [rule(cooldown_s=0)])
    first = AlertService(store, s.alerts, s.checks.min_samples)
    first.start()
    failing = {m: [drift("fail")] for m in ("a", "b", "c")}
    fired = first.manager.evaluate(report(T0, failing))
    resolved = first.manager.evaluate(report(T0 + timedelta(minutes=5), {**failing, "a": [drift("ok")]}))
    assert [e["event"] for e in fired] == ["fire"] * 3 and [e["event"] for e in resolved] == ["resolve"]
    wait_until(lambda: len(rcv.requests) >= 4, timeout=20, message="attempts while the receiver is down")
    first.stop()
    assert rcv.ok() == [] and not drained(store)

    rcv.default = 200  # the receiver is back; a new process on the same store
    second = AlertService(store, s.alerts, s.checks.min_samples)
    second.manager.load()
    assert {st.model: st.state for st in second.manager.states.values()} == {
        "a": "resolved", "b": "firing", "c": "firing"}
    # the same results again: nothing new fires, nothing resolves twice
    assert second.manager.evaluate(report(T0 + timedelta(minutes=10), {**failing, "a": [drift("ok")]})) == []
    second.dispatcher.start()
    try:
        wait_until(lambda: drained(store), timeout=20, message="outbox drained")
        time.sleep(0.5)
    finally:
        second.stop()
    expected = [e["notification_id"] for e in fired + resolved]
    keys = rcv.keys()
    assert sorted(keys) == sorted(expected) and len(set(keys)) == len(keys)  # none lost, none twice
    order = [json.loads(r["body"])["event"] for r in rcv.ok() if json.loads(r["body"])["alert"]["model"] == "a"]
    assert order == ["fire", "resolve"]
    assert [e[0] for e in events(store)].count("fire") == 3


def test_a_crash_after_the_event_before_the_outbox_is_finished_on_restart(store, settings, receiver, monkeypatch):
    from monitor.alerts.outbox import Outbox
    from monitor.errors import StoreError

    rcv = receiver()
    s = with_alerts(settings, {"hook": webhook(rcv.url()), "slack": {"type": "slack", "url": rcv.url("/slack")}},
                    [rule(channels=("hook", "slack"))])
    crashing = AlertService(store, s.alerts, s.checks.min_samples)

    def crash(self, rows):
        raise StoreError("killed between the alert event and its outbox rows")
    monkeypatch.setattr(Outbox, "enqueue", crash)
    with pytest.raises(StoreError):
        crashing.manager.evaluate(report(T0, {"llama": [drift("fail")]}))
    monkeypatch.undo()
    assert [e[0] for e in events(store)] == ["fire"] and outbox(store) == []

    restarted = AlertService(store, s.alerts, s.checks.min_samples)
    restarted.manager.load()  # adopts the fire and enqueues its notifications
    restarted.manager.load()  # a second restart changes nothing
    assert restarted.manager.evaluate(report(T0 + timedelta(minutes=5), {"llama": [drift("fail")]})) == []
    assert restarted.dispatcher.run_once() == 2
    (nid,) = {e[2] for e in events(store)}
    assert rcv.keys("/hook") == [nid] and rcv.keys("/slack") == [nid]
    assert len(events(store)) == 1


def test_a_failed_write_mid_run_is_finished_by_the_next_run_without_a_second_fire(store, settings, receiver,
                                                                                  monkeypatch):
    from monitor.alerts.outbox import Outbox
    from monitor.errors import StoreError

    rcv = receiver()
    s = with_alerts(settings, {"hook": webhook(rcv.url())}, [rule()])
    service = AlertService(store, s.alerts, s.checks.min_samples)
    real = Outbox.enqueue
    calls = []

    def flaky(self, rows):
        calls.append(rows)
        if len(calls) == 1:
            raise StoreError("the store went away for a moment")
        return real(self, rows)
    monkeypatch.setattr(Outbox, "enqueue", flaky)
    with pytest.raises(StoreError):
        service.manager.evaluate(report(T0, {"llama": [drift("fail")]}))
    assert service.manager.evaluate(report(T0 + timedelta(minutes=5), {"llama": [drift("fail")]})) == []
    assert service.dispatcher.run_once() == 1
    assert len(events(store)) == 1 and rcv.keys() == [events(store)[0][2]]


# -- the state machine ----------------------------------------------------------------

def test_for_s_cooldown_and_resolve_after_fire(store, settings, receiver):
    rcv = receiver()
    s = with_alerts(settings, {"hook": webhook(rcv.url())}, [rule(for_s=120, cooldown_s=600)])
    service = AlertService(store, s.alerts, s.checks.min_samples)
    m = service.manager

    def run(minutes: float, status: str | None) -> list[str]:
        results = {"llama": [drift(status)]} if status else {}
        return [e["event"] for e in m.evaluate(report(T0 + timedelta(minutes=minutes), results))]

    assert run(0, "fail") == []                   # pending: for_s (2 min) not reached on the first failing run
    assert run(1, "ok") == []                     # cleared while pending: no notification
    assert run(2, "fail") == []                   # pending again, since minute 2
    assert run(3, "insufficient_data") == []      # no verdict: holds
    assert run(3.5, None) == []                   # no events at all: holds
    assert run(3.9, "fail") == []                 # held 1.9 minutes
    assert run(4, "fail") == ["fire"]             # held 2 minutes
    assert run(5, "fail") == []                   # firing: no repeat
    assert run(6, "ok") == ["resolve"]
    assert run(7, "fail") == []                   # cooldown: 10 minutes from the resolve
    assert run(12, "fail") == []
    assert run(15.9, "fail") == []
    assert run(16, "fail") == ["fire"]            # cooled, and pending since minute 7
    kinds = [e[0] for e in events(store)]
    assert kinds == ["fire", "resolve", "fire"]
    assert service.dispatcher.run_once() == 3
    bodies = [json.loads(r["body"]) for r in rcv.ok()]
    assert [b["event"] for b in bodies] == ["fire", "resolve", "fire"]  # resolve follows its fire
    assert bodies[1]["alert"]["status"] == "resolved" and bodies[1]["alert"]["started_at"] == bodies[0]["timestamp"]
    assert service.dispatcher.run_once() == 0


def test_rule_matching_models_metric_globs_warn_and_above(store, settings):
    from monitor.alerts.rules import match_rule
    from monitor.config import AlertRule

    rep = report(T0, {
        "llama-3": [drift("fail", "latency_ms"), drift("warn", "ttft_ms"), drift("fail", "prompt_language")],
        "qwen": [drift("fail", "latency_ms")],
        "gpt": [Result(check="quality", metric="refusal_rate", status="ok", value=0.08, current_n=400),
                Result(check="quality", metric="empty_rate", status="ok", value=0.08, current_n=10)],
    })

    def hits(**kw):
        r = AlertRule(name="r", channels=["x"], **{"check": "feature_drift", **kw})
        return {k[0]: sorted(x.metric for x in m.hits) for k, m in match_rule(r, rep, 100).items() if m.hits}

    assert hits() == {"llama-3": ["latency_ms", "prompt_language"], "qwen": ["latency_ms"]}
    assert hits(metric="*_ms", status="warn") == {"llama-3": ["latency_ms", "ttft_ms"], "qwen": ["latency_ms"]}
    assert hits(models=["llama*"], metric="latency_ms") == {"llama-3": ["latency_ms"]}
    # a quality rate over a threshold, with enough events in the window (empty_rate has 10 < 100)
    assert hits(check="quality", metric="*_rate", above=0.05) == {"gpt": ["refusal_rate"]}


# -- payloads -------------------------------------------------------------------------

def test_slack_and_pagerduty_payload_shapes(store, settings, receiver):
    rcv = receiver(default=202)
    s = with_alerts(settings, {
        "slack": {"type": "slack", "url": rcv.url("/slack")},
        "pd": {"type": "pagerduty", "url": rcv.url("/pd"), "routing_key": "R0UTING"},
    }, [rule(channels=("slack", "pd"), severity="critical", cooldown_s=0)])
    service = AlertService(store, s.alerts, s.checks.min_samples)
    fire, = service.manager.evaluate(report(T0, {"llama": [drift("fail")]}))
    resolve, = service.manager.evaluate(report(T0 + timedelta(minutes=5), {"llama": [drift("ok")]}))
    assert service.dispatcher.run_once() == 4
    slack = [json.loads(r["body"]) for r in rcv.ok("/slack")]
    assert [set(b) for b in slack] == [{"text", "blocks"}] * 2
    assert "llama" in slack[0]["text"] and slack[0]["blocks"][0]["type"] == "header"
    assert all(b["type"] in ("header", "section", "context") for b in slack[0]["blocks"])
    assert "resolved" in slack[1]["text"]
    pd = [json.loads(r["body"]) for r in rcv.ok("/pd")]
    assert [p["event_action"] for p in pd] == ["trigger", "resolve"]
    assert {p["routing_key"] for p in pd} == {"R0UTING"}
    assert pd[0]["dedup_key"] == pd[1]["dedup_key"] == fire["alert_id"]
    payload = pd[0]["payload"]
    assert payload["severity"] == "critical" and payload["source"] == "llm-monitor"
    assert payload["summary"] == fire["summary"] and payload["component"] == "llama"
    assert payload["custom_details"]["results"][0]["metric"] == "latency_ms"
    assert "payload" not in pd[1]
    # no secret is stored in the outbox
    assert not store.query_rows("SELECT count() FROM alert_outbox WHERE position(payload, 'R0UTING') > 0")[0][0]
    assert resolve["notification_id"] in [r["headers"]["Idempotency-Key"] for r in rcv.ok("/pd")]


# -- config ---------------------------------------------------------------------------

def test_config_rejects_unknown_channels_bad_urls_and_unsigned_webhooks(tmp_path, monkeypatch):
    def load_yaml(text: str):
        path = tmp_path / "m.yaml"
        path.write_text(text)
        return load(path)

    with pytest.raises(ConfigError, match="unknown channel"):
        load_yaml("alerts:\n  channels: {}\n  rules: [{name: r, check: slo, channels: [ops]}]\n")
    with pytest.raises(ConfigError, match="http:// or https://"):
        load_yaml("alerts:\n  channels: {ops: {type: slack, url: 'file:///etc/passwd'}}\n")
    with pytest.raises(ConfigError, match="needs secret"):
        load_yaml("alerts:\n  channels: {ops: {type: webhook, url: 'https://example.com/h'}}\n")
    monkeypatch.setenv("MONITOR_ALERTS__CHANNELS__OPS__SECRET", "from-env")
    s = load_yaml("alerts:\n  channels: {ops: {type: webhook, url: 'https://example.com/h'}}\n"
                  "  rules: [{name: r, check: quality, metric: refusal_rate, above: 0.05, channels: [ops]}]\n")
    assert s.alerts.channels["ops"].secret.get_secret_value() == "from-env"


# -- through the real check runner ----------------------------------------------------

def test_slo_results_of_the_real_check_runner_fire_and_resolve(store, settings, receiver):
    from monitor.checks.runner import CheckRunner, CheckScheduler
    from monitor.checks.slo import SloCheck

    rcv = receiver()
    s = with_alerts(settings, {"hook": webhook(rcv.url())},
                    [rule("slow", check="slo", metric="latency_ms_*", severity="critical", cooldown_s=0)],
                    min_samples=5)
    s = s.model_copy(update={"checks": s.checks.model_copy(update={"slo": {"*": SloThresholds(latency_ms_p50=500)}})})
    now = datetime.now(timezone.utc)

    def add(latency_ms: float, n: int, offset_s: float):
        rows = [[now - timedelta(seconds=offset_s + i), f"t{offset_s}-{i}", f"s{offset_s}-{i}", "llama", latency_ms]
                for i in range(n)]
        store.insert("inference_events", rows, ("timestamp", "trace_id", "span_id", "model", "latency_ms"))

    add(2000, 10, 60)
    runner = CheckRunner(store, s.checks, checks=[SloCheck()])
    service = AlertService(store, s.alerts, s.checks.min_samples)
    scheduler = CheckScheduler(runner, interval_s=0.2, first_delay_s=0)
    scheduler.add_listener(service.on_report)
    service.start()
    scheduler.start()
    try:
        wait_until(lambda: len(rcv.ok()) >= 1, timeout=20, message="fire delivered")
        add(10, 40, 30)  # fast again: the median drops under the SLO
        wait_until(lambda: len(rcv.ok()) >= 2, timeout=20, message="resolve delivered")
    finally:
        scheduler.stop()
        service.stop()
    bodies = [json.loads(r["body"]) for r in rcv.ok()]
    assert [b["event"] for b in bodies] == ["fire", "resolve"]
    assert bodies[0]["results"][0]["metric"] == "latency_ms_p50" and bodies[0]["results"][0]["value"] == 2000


# -- the process: `monitor up`, kill -9, restart, `monitor alerts test` ---------------

def _config(path, hook_url: str, dead_url: str) -> None:
    path.write_text(f"""
checks:
  interval_s: 1
  min_samples: 3
  semantic: {{enabled: false}}
  slo: {{"*": {{latency_ms_p50: 100}}}}
alerts:
  poll_interval_s: 0.2
  retry: {{initial_s: 0.1, max_s: 0.3, max_age_s: 120}}
  channels:
    hook: {{type: webhook, url: "{hook_url}", secret: {SECRET}, timeout_s: 2}}
    nowhere: {{type: slack, url: "{dead_url}", timeout_s: 1}}
  rules:
    - {{name: slow, check: slo, metric: "latency_ms_p50", severity: critical, channels: [hook]}}
""")


def _start_up(cfg, data, env, http_port, admin_port):
    proc = subprocess.Popen([*MONITOR, "--config", str(cfg), "up", "--data-dir", str(data), "--http-port",
                             str(http_port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
                             "--admin-port", str(admin_port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)

    def up():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-3000:])
        from monitor.config import load
        from monitor.errors import ConfigError
        from monitor.runtime.admin import admin_available

        try:  # the store process (admin endpoint, with the token it wrote for this port), then the receiver
            return admin_available(load(overrides={"checks": {"admin_port": admin_port}})) \
                and urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2).status == 200
        except OSError:
            return False
        except ConfigError:  # another process answered on the port (ours then fails to bind: poll() says so)
            return False
    wait_until(up, timeout=90, message="monitor up")
    return proc


@pytest.mark.slow
def test_monitor_up_killed_with_pending_notifications_then_alerts_test(tmp_path, receiver):
    from conftest import otlp_request, post_traces

    rcv = receiver(default=503)
    data, cfg, http_port, admin_port = tmp_path / "data", tmp_path / "monitor.yaml", free_port(), free_port()
    _config(cfg, rcv.url(), f"http://127.0.0.1:{free_port()}/nobody-listens")
    # no dashboard in this test (the setting is ignored where the dashboards do not exist)
    env = dict(os.environ, MONITOR_CHECKS__ADMIN_PORT=str(admin_port), MONITOR_DASHBOARD__ENABLED="false")
    env.pop("MONITOR_CONFIG", None)
    proc = _start_up(cfg, data, env, http_port, admin_port)
    try:
        assert post_traces(http_port, otlp_request(0, model="llama", spans=5)) == 200  # 250 ms each > 100 ms
        wait_until(lambda: len(rcv.requests) >= 2, timeout=60, message="fire attempted while the receiver is down")
    finally:
        proc.kill()  # kill -9 with the notification pending
        proc.wait(30)
    assert rcv.ok() == []

    rcv.default = 200
    proc = _start_up(cfg, data, env, http_port, admin_port)
    try:
        wait_until(lambda: rcv.ok(), timeout=60, message="pending fire delivered after the restart")
        time.sleep(2.5)  # a few more check runs: still failing, must not fire again
        test = subprocess.run([*MONITOR, "--config", str(cfg), "alerts", "test", "--channel", "hook"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert test.returncode == 0, test.stdout + test.stderr
        assert "delivered to hook" in test.stdout
        bad = subprocess.run([*MONITOR, "--config", str(cfg), "alerts", "test", "--channel", "nowhere",
                              "--wait", "1"], capture_output=True, text=True, env=env, timeout=120)
        assert bad.returncode == 1 and "NOT delivered" in bad.stderr, bad.stdout + bad.stderr
        listed = subprocess.run([*MONITOR, "--config", str(cfg), "alerts", "list", "--json"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert listed.returncode == 0, listed.stderr
        out = json.loads(listed.stdout)
        assert [(a["rule"], a["model"]) for a in out["firing"]] == [("slow", "llama")]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    fires = [r for r in rcv.ok() if json.loads(r["body"])["event"] == "fire"]
    tests = [r for r in rcv.ok() if json.loads(r["body"])["event"] == "test"]
    assert len(fires) == 1 and len(tests) == 1 and all(r["verified"] for r in rcv.ok())
    rows = chdb_query(data, "SELECT event, count() FROM alert_events GROUP BY event ORDER BY event")
    assert rows == [["fire", 1], ["test", 2]]
    assert chdb_query(data, "SELECT channel, status FROM alert_outbox FINAL WHERE event = 'test' "
                            "ORDER BY channel") == [["hook", "delivered"], ["nowhere", "dead"]]
