"""The admin endpoint of ``monitor up`` against hostile requests: a real AdminServer on a real
port, driven by a real HTTP client (http.client, so bodies can be anything). Every bad request
is answered 400 (413 for a body over 1 MiB) with a JSON ``{"error": ...}`` naming what was
wrong; none is a 500, none shows a traceback; good requests still work."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port

from monitor.alerts.service import AlertService
from monitor.runtime.admin import AdminServer
from monitor.config import AlertsSettings

SECRET = "s3cret-key"
TOKEN = "admin-token-for-the-hostile-request-tests"
MAX_BODY_BYTES = 1024 * 1024  # the documented limit (monitor.runtime.admin.MAX_BODY_BYTES)


class Hook:
    """A webhook receiver answering every POST with ``status`` and ``headers``."""

    def __init__(self, status: int = 200, headers: dict | None = None):
        self.requests: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                hook.requests.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Admin:
    """An AdminServer on its own event loop thread, as ``monitor up`` runs it."""

    def __init__(self, store, settings):
        from monitor.checks.runner import CheckRunner
        from monitor.checks.slo import SloCheck

        self.alerts = AlertService(store, settings.alerts, settings.checks.min_samples)
        self.server = AdminServer(CheckRunner(store, settings.checks, checks=[SloCheck()]), "127.0.0.1", 0,
                                  self.alerts, token=TOKEN)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def call(self, method: str, path: str, body=None, headers: dict | None = None, **kw):
        """``(status, content type, raw body)``; as the CLI sends them: with the token, and a POST as
        JSON (tests/test_security.py sends what else may come)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {TOKEN}", **({"Content-Type": "application/json"} if method == "POST"
                                                          else {}), **(headers or {})}
        try:
            conn.request(method, path, body=body, headers=headers, **kw)
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type", ""), r.read()
        finally:
            conn.close()

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def hooks():
    made = []

    def make(**kw):
        h = Hook(**kw)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


@pytest.fixture
def admin(store, settings, hooks):
    ok, failing = hooks(), hooks(status=503, headers={"Retry-After": "1e12"})
    alerts = AlertsSettings(
        channels={"hook": {"type": "webhook", "url": ok.url, "secret": SECRET, "timeout_s": 2},
                  "down": {"type": "webhook", "url": failing.url, "secret": SECRET, "timeout_s": 2}},
        poll_interval_s=0.1, retry={"initial_s": 0.05, "max_s": 0.2, "max_age_s": 3600})
    a = Admin(store, settings.model_copy(update={"alerts": alerts}))
    a.hooks = {"hook": ok, "down": failing}
    yield a
    a.close()


def _error(status: int, ctype: str, raw: bytes) -> str:
    assert "Traceback" not in raw.decode("utf-8", "replace") and 'File "' not in raw.decode("utf-8", "replace")
    assert ctype.startswith("application/json"), (status, ctype, raw[:300])
    body = json.loads(raw)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


BAD_BODIES = [  # (path, body, status, what the error says)
    ("/admin/check", b"{not json", 400, "the body is not valid JSON: Expecting property name"),
    ("/admin/check", b"\xff\xfe\x00garbage", 400, "the body is not valid JSON"),
    ("/admin/check", b"[" * 100_000, 400, "the body is not valid JSON: nested too deeply"),
    ("/admin/check", b"[1, 2]", 400, "the body must be a JSON object, not a list"),
    ("/admin/check", b'"model"', 400, "the body must be a JSON object, not a string"),
    ("/admin/check", b"null", 400, "the body must be a JSON object, not null"),
    ("/admin/check", b"42", 400, "the body must be a JSON object, not a number"),
    ("/admin/check", b'{"model": 5}', 400, "'model' must be a string, not a number"),
    ("/admin/check", b'{"model": {"$ne": 1}}', 400, "'model' must be a string, not an object"),
    ("/admin/check", b'{"only": "slo"}', 400, "'only' must be a list of strings, not a string"),
    ("/admin/check", b'{"only": ["slo", 3]}', 400, "'only' must be a list of strings, not a list"),
    ("/admin/check", b'{"window": 3600}', 400, "'window' must be a string, not a number"),
    ("/admin/check", b'{"window": "soon"}', 400, "cannot read the duration 'soon'"),
    ("/admin/check", b'{"window": "0s"}', 400, "the window '0s' is empty"),
    ("/admin/check", b'{"window": "99999999999999d"}', 400, "the window '99999999999999d' is too long"),
    ("/admin/check", b'{"reference": "yesterday"}', 400, "'reference' must be one of auto, baseline, day, week"),
    ("/admin/check", b'{"modle": "x"}', 400, "unknown field(s) 'modle'; expected: model, window, reference, only"),
    ("/admin/baseline", b'{"model": "m", "from": [], "to": "now"}', 400, "'from' must be a string, not a list"),
    ("/admin/baseline", b'{"model": "m", "from": "-1h", "to": 5}', 400, "'to' must be a string, not a number"),
    ("/admin/baseline", b'{"from": "-1h", "to": "now"}', 400, "missing field(s) 'model'"),
    ("/admin/baseline", b'{"model": "m"}', 400, "missing field(s) 'from', 'to'"),
    ("/admin/baseline", b'{"model": " ", "from": "-1h", "to": "now"}', 400, "'model' must not be empty"),
    ("/admin/baseline", b'{"model": "m", "from": "yesterday", "to": "now"}', 400, "cannot read the time 'yesterday'"),
    ("/admin/baseline", b'{"model": "m", "from": "now", "to": "-1h"}', 400, "must be after 'from'"),
    ("/admin/baseline", b'{"model": "m", "from": "-99999999999d", "to": "now"}', 400, "too far in the past"),
    ("/admin/baseline", b'{"model": "m", "from": "-9999999d", "to": "now"}', 400, "too far in the past"),
    ("/admin/baseline", b'{"model": "m", "from": "-1h", "to": "now", "group": 1}', 400,
     "'group' must be a string, not a number"),
    ("/admin/baseline", b"[]", 400, "the body must be a JSON object, not a list"),
    ("/admin/alerts/test", b'{"channel": "hook", "wait_s": "x"}', 400,
     "'wait_s' must be a finite number, not a string"),
    ("/admin/alerts/test", b'{"channel": "hook", "wait_s": NaN}', 400,
     "'wait_s' must be a finite number, not a number"),
    ("/admin/alerts/test", b'{"channel": "hook", "wait_s": true}', 400,
     "'wait_s' must be a finite number, not a boolean"),
    ("/admin/alerts/test", b'{"channel": "hook", "wait_s": -1}', 400,
     "'wait_s' must be from 0 to 3600 seconds, not -1"),
    ("/admin/alerts/test", b'{"channel": "hook", "wait_s": 1e300}', 400, "'wait_s' must be from 0 to 3600 seconds"),
    ("/admin/alerts/test", b'{"channel": 7}', 400, "'channel' must be a string, not a number"),
    ("/admin/alerts/test", b'{"wait_s": 1}', 400, "missing field(s) 'channel'"),
    ("/admin/alerts/test", b'{"channel": "nope"}', 400, "no alert channel 'nope'; configured: down, hook"),
    ("/admin/alerts/test", b"{", 400, "the body is not valid JSON"),
    ("/admin/alerts/test", b'"hook"', 400, "the body must be a JSON object, not a string"),
]


def test_a_bad_body_is_400_with_a_json_error_saying_what_was_wrong(admin):
    answers = []
    for path, body, _, _ in BAD_BODIES:
        status, ctype, raw = admin.call("POST", path, body, {"Content-Type": "application/json"})
        answers.append((path, body[:60], status, _error(status, ctype, raw)))
    wrong = [(a, m) for a, (_, _, status, m) in zip(answers, BAD_BODIES) if a[2] != status or m not in a[3]]
    assert wrong == [] and len(answers) == len(BAD_BODIES) == 38
    assert store_untouched(admin)


def store_untouched(admin) -> bool:
    """No bad request wrote anything: no baseline pinned, no test notification enqueued."""
    store = admin.server.runner.store
    return store.query_rows("SELECT count() FROM baselines")[0][0] == 0 and \
        store.query_rows("SELECT count() FROM alert_outbox")[0][0] == 0


BAD_HISTORY = [
    ("history=abc", "history must be a whole number from 0 to 10000, not 'abc'"),
    ("history=-5", "not '-5'"),
    ("history=1.5", "not '1.5'"),
    ("history=", "not ''"),
    ("history=10001", "not '10001'"),
    ("history=99999999999999999999999999", "not '99999999999999999999999999'"),
    ("history=%C2%B2", "not '\u00b2'"),  # a digit to str.isdigit, not to int()
]


def test_a_bad_history_is_400(admin):
    answers = [(q, *admin.call("GET", f"/admin/alerts?{q}")) for q, _ in BAD_HISTORY]
    wrong = [(q, status, raw) for (q, status, ctype, raw), (_, message) in zip(answers, BAD_HISTORY)
             if status != 400 or message not in _error(status, ctype, raw)]
    assert wrong == [] and len(answers) == 7


def test_oversized_bodies_are_413_and_a_body_of_exactly_the_limit_is_read(admin):
    over = b'{"model": "x"}' + b" " * (MAX_BODY_BYTES + 1 - len(b'{"model": "x"}'))
    status, ctype, raw = admin.call("POST", "/admin/check", over)
    assert status == 413 and f"at most {MAX_BODY_BYTES} are accepted" in _error(status, ctype, raw)
    # chunked, so no Content-Length says so in advance: refused while reading
    chunks = (b" " * 65536 for _ in range(MAX_BODY_BYTES // 65536 + 2))
    status, ctype, raw = admin.call("POST", "/admin/alerts/test", chunks, {"Transfer-Encoding": "chunked"},
                                    encode_chunked=True)
    assert status == 413 and f"over {MAX_BODY_BYTES} bytes" in _error(status, ctype, raw)
    exact = b'{"model": "x"}' + b" " * (MAX_BODY_BYTES - len(b'{"model": "x"}'))
    status, _, raw = admin.call("POST", "/admin/check", exact)
    assert status == 200 and json.loads(raw)["scopes"] == []
    from monitor.runtime.admin import MAX_BODY_BYTES as limit
    assert limit == MAX_BODY_BYTES


def test_unknown_paths_and_methods_answer_json_too(admin):
    status, ctype, raw = admin.call("GET", "/admin/nothing")
    assert status == 404 and _error(status, ctype, raw) == "404 Not Found: GET /admin/nothing"
    status, ctype, raw = admin.call("GET", "/admin/check")
    assert status == 405 and _error(status, ctype, raw) == "405 Method Not Allowed: GET /admin/check"


def test_good_requests_still_work(admin, store):
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    store.insert("inference_events", [[now - timedelta(seconds=i + 1), f"t{i}", f"s{i}", "llama", 100.0]
                                      for i in range(5)], ("timestamp", "trace_id", "span_id", "model", "latency_ms"))
    status, _, raw = admin.call("POST", "/admin/check", b"")  # an empty body: every default
    assert status == 200 and [s["model"] for s in json.loads(raw)["scopes"]] == ["llama"]
    status, _, raw = admin.call("POST", "/admin/check", json.dumps(
        {"model": "llama", "window": "30m", "reference": "day", "only": ["slo"]}))
    assert status == 200 and [s["model"] for s in json.loads(raw)["scopes"]] == ["llama"]
    status, _, raw = admin.call("POST", "/admin/baseline", json.dumps(
        {"model": "llama", "from": "-2h", "to": "-1h", "group": None, "note": "calm week"}))
    assert status == 200 and json.loads(raw)["model"] == "llama"
    status, _, raw = admin.call("GET", "/admin/baselines")
    assert status == 200 and [(b["model"], b["note"]) for b in json.loads(raw)] == [("llama", "calm week")]
    for n in ("0", "10000", "3"):
        status, _, raw = admin.call("GET", f"/admin/alerts?history={n}")
        assert status == 200 and set(json.loads(raw)) == {"firing", "recent", "outbox", "dead"}
    status, _, raw = admin.call("POST", "/admin/alerts/test", json.dumps({"channel": "hook", "wait_s": 10}))
    out = json.loads(raw)
    assert status == 200 and (out["status"], out["attempts"], out["error"]) == ("delivered", 1, "")
    assert len(admin.hooks["hook"].requests) == 1


def test_alerts_test_to_a_webhook_answering_retry_after_1e12_reports_not_delivered(admin, store):
    """It was a 500 (OverflowError): the hint is capped at retry.max_s (0.2 s), the test gives up after wait_s."""
    t0 = time.monotonic()
    status, ctype, raw = admin.call("POST", "/admin/alerts/test", json.dumps({"channel": "down", "wait_s": 1}))
    assert status == 200, raw[:500]
    out = json.loads(raw)
    assert out["status"] == "dead" and out["error"].startswith("not delivered within 1s: HTTP 503")
    assert out["attempts"] >= 2 and len(admin.hooks["down"].requests) == out["attempts"]
    assert time.monotonic() - t0 < 10
    assert store.query_rows("SELECT status, attempts FROM alert_outbox FINAL WHERE channel = 'down'") == [
        ("dead", out["attempts"])]
