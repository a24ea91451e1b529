"""The monitor's own health, as Prometheus metrics on ``/metrics``.

One :class:`SelfMetrics` per process (its own registry, so tests can run
several pipelines in one interpreter). Every long-running command serves it;
``monitor status`` reads it back.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

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
        self.alerts_fired = Counter(
            "monitor_alerts_fired", "Alerts that fired, by rule and severity", ["rule", "severity"], registry=r)
        self.alerts_resolved = Counter(
            "monitor_alerts_resolved", "Alerts that resolved, by rule", ["rule"], registry=r)
        self.alert_notifications = Counter(
            "monitor_alert_notifications", "Notification delivery attempts by channel and outcome "
            "(delivered, retry, dead)", ["channel", "outcome"], registry=r)
        self.alert_outbox_pending = Gauge(
            "monitor_alert_outbox_pending", "Notifications waiting in the outbox, by channel", ["channel"], registry=r)
        self._server: WSGIServer | None = None

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
