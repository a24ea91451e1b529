"""The monitor's own health, as Prometheus metrics on ``/metrics``.

One :class:`SelfMetrics` per process (its own registry, so tests can run
several pipelines in one interpreter). Every long-running command serves it;
``monitor status`` reads it back.

``/metrics`` needs ``Authorization: Bearer <telemetry.auth_token>`` when that is set (and then
``/healthz`` answers probes without it); without a token (loopback only) it refuses a ``Host``
that DNS rebinding could produce. A credential in the query string is refused either way.
"""

from __future__ import annotations

import logging
import socket
from socketserver import ThreadingMixIn
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

from monitor.auth import bearer_ok, host_allowed, query_has_credential

__all__ = ["SelfMetrics"]

log = logging.getLogger("monitor")

_INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class SelfMetrics:
    def __init__(self, role: str = "") -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        from monitor import __version__
        Info("monitor", "Which monitor command this process runs", registry=r).info(
            {"role": role, "version": __version__})
        self.received = Counter(
            "monitor_receiver_items_accepted", "Spans, data points and log records accepted (answered 200)",
            ["signal", "protocol"], registry=r)
        self.rejected = Counter(
            "monitor_receiver_items_rejected", "Items refused: invalid (partial success) or whole request refused",
            ["signal", "protocol", "reason"], registry=r)
        self.requests = Counter(
            "monitor_receiver_requests", "Export requests by outcome", ["signal", "protocol", "outcome"], registry=r)
        self.queue_depth = Gauge(
            "monitor_queue_depth", "Requests waiting in the in-process queue for ingest", registry=r)
        self.queue_bytes = Gauge(
            "monitor_queue_bytes", "Approximate bytes waiting in the in-process queue", registry=r)
        self.spool_messages = Gauge(
            "monitor_spool_messages", "Messages in the durable spool not yet acknowledged by Kafka", registry=r)
        self.spool_bytes = Gauge("monitor_spool_bytes", "Bytes of payload in the durable spool", registry=r)
        self.spool_capacity = Gauge("monitor_spool_capacity_bytes", "Configured spool limit", registry=r)
        self.spool_oldest_age = Gauge(
            "monitor_spool_oldest_age_seconds", "Age of the oldest message waiting in the spool", registry=r)
        self.spool_full = Gauge(
            "monitor_spool_full", "1 while the spool is full and the receiver answers 503", registry=r)
        self.produced = Counter(
            "monitor_kafka_produced_messages", "Messages acknowledged by Kafka", ["topic"], registry=r)
        self.produce_errors = Counter(
            "monitor_kafka_produce_errors", "Failed produce attempts (messages stay in the spool)", registry=r)
        self.broker_up = Gauge("monitor_kafka_broker_up", "1 when the last produce succeeded", registry=r)
        self.consumer_lag = Gauge(
            "monitor_ingest_consumer_lag", "Messages behind the end of the partition", ["topic", "partition"],
            registry=r)
        self.dead_lettered = Counter(
            "monitor_ingest_dead_lettered_messages", "Undecodable messages sent to the dead-letter topic",
            ["topic"], registry=r)
        self.insert_seconds = Histogram(
            "monitor_store_insert_seconds", "ClickHouse insert latency", ["table"], buckets=_INSERT_BUCKETS,
            registry=r)
        self.rows_written = Counter(
            "monitor_store_rows_written", "Rows written to ClickHouse", ["table"], registry=r)
        self.store_errors = Counter(
            "monitor_store_errors", "Failed inserts (retried; offsets not committed)", registry=r)
        self.rows_refused = Counter(
            "monitor_store_rows_refused", "Rows the store refused (isolated from their batch and set aside in "
            "dead_letters; the rest of the batch was stored)", ["table"], registry=r)
        self.values_fixed = Counter(
            "monitor_ingest_values_fixed", "Values outside what their column holds, replaced at normalisation "
            "(the original is kept in the attribute monitor.fixed)", registry=r)
        self.dead_letters = Counter(
            "monitor_ingest_dead_letters", "Messages or items set aside in the dead_letters table, by why",
            ["signal", "why"], registry=r)
        self.ingest_batches = Counter(
            "monitor_ingest_batches", "Batches ingest wrote (each one insert per table)", registry=r)
        self.ingest_stage_seconds = Counter(
            "monitor_ingest_stage_seconds", "Time spent per ingest stage (decode, normalize, enrich, write)",
            ["stage"], registry=r)
        self.proxy_requests = Counter(
            "monitor_proxy_requests", "Requests through the capture proxy by route and HTTP status",
            ["route", "status"], registry=r)
        self.proxy_capture_errors = Counter(
            "monitor_proxy_capture_errors", "Capture steps that failed (the request itself went on unmonitored)",
            registry=r)
        self.capture_dropped = Counter(
            "monitor_capture_dropped", "Capture records or proxy spans dropped because the pipeline fell behind "
            "(the requests themselves were served; only their monitoring is missing)", ["reason"], registry=r)
        self.proxy_capture_dropped = Counter(
            "monitor_proxy_capture_dropped", "Capture records the sink refused (its buffer full or the pipeline "
            "away): the request itself went on, its record was lost", registry=r)
        self.redactions = Counter(
            "monitor_redactions", "Redacted findings in content, by kind", ["kind"], registry=r)
        self.shadow_requests = Counter(
            "monitor_shadow_requests", "Shadow requests to candidate models (proxy.shadow), by outcome: ok, "
            "error, timeout, and those not sent: rate, concurrency, budget, truncated, unparsable", ["outcome"],
            registry=r)
        self.shadow_managed_tokens = Counter(
            "monitor_shadow_managed_tokens", "Tokens (input + output) shadow requests used on managed endpoints",
            registry=r)
        self.shadow_in_flight = Gauge(
            "monitor_shadow_in_flight", "Shadow requests waiting for their answer", registry=r)
        self.alerts_fired = Counter(
            "monitor_alerts_fired", "Alerts that fired, by rule and severity", ["rule", "severity"], registry=r)
        self.alerts_resolved = Counter(
            "monitor_alerts_resolved", "Alerts that resolved, by rule", ["rule"], registry=r)
        self.alert_notifications = Counter(
            "monitor_alert_notifications", "Notification delivery attempts by channel and outcome "
            "(delivered, retry, dead)", ["channel", "outcome"], registry=r)
        self.alert_outbox_pending = Gauge(
            "monitor_alert_outbox_pending", "Notifications waiting in the outbox, by channel", ["channel"], registry=r)
        self.auth_refused = Counter(
            "monitor_auth_refused", "Requests refused before they were served, by endpoint and why "
            "(unauthenticated, credential_in_query, bad_host, browser_origin, content_type)",
            ["endpoint", "reason"], registry=r)
        self.dashboard_prefetch = Counter(
            "monitor_dashboard_prefetch_calls", "Page query calls run ahead of their time bucket for pages in view, "
            "by outcome (made, skipped: no time left in the turn, failed)", ["outcome"], registry=r)
        self.dashboard_prefetch_seconds = Counter(
            "monitor_dashboard_prefetch_seconds", "Time the page query calls run ahead took", registry=r)
        self._server: WSGIServer | None = None

    def serve(self, host: str, port: int, token: str | None = None) -> int:
        """Serve /metrics on ``host:port`` in a daemon thread; returns the bound port. ``token``:
        the bearer token callers need (see the module docstring)."""
        import threading

        class Server(_ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        app = _guarded(make_wsgi_app(self.registry), token, host, self.auth_refused)
        server = make_server(host, port, app, Server, handler_class=_SilentHandler)
        threading.Thread(target=server.serve_forever, name="monitor-metrics", daemon=True).start()
        self._server = server
        return server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - no access log (a URL may hold what it should not)
        pass


def _guarded(app, token: str | None, bind_host: str, refused: Counter):
    """The metrics WSGI app behind the checks of the module docstring."""

    def guarded(environ, start_response):
        def deny(status: str, reason: str, message: str, headers: tuple = ()):
            refused.labels("metrics", reason).inc()
            start_response(status, [("Content-Type", "text/plain; charset=utf-8"), *headers])
            return [message.encode() + b"\n"]

        query = environ.get("QUERY_STRING", "")
        if query and query_has_credential(parse_qsl(query, keep_blank_values=True), token):
            return deny("400 Bad Request", "credential_in_query",
                        "credentials are not accepted in the query string; send Authorization: Bearer <token>")
        if token is None and not host_allowed(environ.get("HTTP_HOST"), bind_host):
            return deny("403 Forbidden", "bad_host", "the Host header does not name this endpoint")
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if token is not None and not bearer_ok(environ.get("HTTP_AUTHORIZATION"), token):
            return deny("401 Unauthorized", "unauthenticated", "missing or invalid bearer token "
                        "(telemetry.auth_token is set)", (("WWW-Authenticate", "Bearer"),))
        return app(environ, start_response)

    return guarded
