"""The demo's local alert receiver: what a team's webhook endpoint would do with a notification.

It checks the signature (:func:`monitor.alerts.verify`, HMAC-SHA256 over
``"{timestamp}.{body}"``), drops repeats by ``Idempotency-Key``, answers 204,
and logs one line per notification, so a newcomer sees an alert arrive next
to the check that raised it. Standard library only; loopback only.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.alerts import verify

__all__ = ["WebhookReceiver"]

log = logging.getLogger("monitor.demo")

_MAX_BODY = 1 << 20


class WebhookReceiver:
    """``POST /alerts`` on ``127.0.0.1:port`` (0: any free port); :attr:`received` holds what arrived."""

    def __init__(self, secret: str, port: int = 0):
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/alerts" or not 0 < length <= _MAX_BODY:
                    self.send_error(404 if self.path != "/alerts" else 400)
                    return
                body = self.rfile.read(length)
                if not verify(receiver.secret, self.headers, body):
                    receiver.rejected += 1
                    self.send_error(401, "bad signature")
                    return
                receiver._accept(self.headers.get("Idempotency-Key", ""), body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:  # quiet: one line per notification instead
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True)

    def _accept(self, key: str, body: bytes) -> None:
        with self._lock:
            if key and key in self._seen:
                return  # a retry of a notification already shown
            self._seen.add(key)
        msg = json.loads(body)
        self.received.append(msg)
        alert = msg.get("alert") or {}
        log.info("demo: webhook receiver got %s: %s", msg.get("event"), alert.get("summary", ""))

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
