"""Kafka client settings and topic setup shared by the producer (sidecar) and the consumer (ingest).

kafka-python is imported only here, in :mod:`monitor.transport.kafka` and in
:mod:`monitor.ingest.consumer`; its errors become :class:`~monitor.errors.TransportError`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from monitor.config import KafkaSettings
from monitor.errors import ConfigError, TransportError

__all__ = ["client_kwargs", "ensure_topics", "all_topics", "dead_letter_topic"]

log = logging.getLogger("monitor.kafka")


def client_kwargs(s: KafkaSettings) -> dict[str, Any]:
    """Connection settings common to producers, consumers and admin clients: the security settings
    (``kafka.security_protocol``, SASL, SSL files) passed through to kafka-python. The result holds
    secrets: never log it."""
    if not s.bootstrap_servers:
        raise ConfigError("kafka.bootstrap_servers is empty: pass --kafka HOST:PORT "
                          "or set MONITOR_KAFKA__BOOTSTRAP_SERVERS")
    kw: dict[str, Any] = {
        "bootstrap_servers": list(s.bootstrap_servers),
        "client_id": s.client_id,
        "security_protocol": s.security_protocol,
    }
    if s.sasl_mechanism:
        kw.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                  sasl_plain_password=s.sasl_password.get_secret_value() if s.sasl_password else None)
    if s.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_check_hostname"] = s.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(s, key)
            if path is not None:
                if not path.is_file():
                    raise ConfigError(f"kafka.{key} {path} is not a file")
                kw[key] = str(path)
        if s.ssl_password is not None:
            kw["ssl_password"] = s.ssl_password.get_secret_value()
    return kw


def all_topics(s: KafkaSettings) -> list[str]:
    return [s.spans_topic, s.metrics_topic, s.logs_topic]


def dead_letter_topic(s: KafkaSettings, topic: str) -> str:
    return f"{topic}{s.dead_letter_suffix}"


def ensure_topics(s: KafkaSettings, topics: list[str]) -> None:
    """Create the topics that do not exist yet (with kafka.partitions and kafka.replication_factor)."""
    if not s.create_topics:
        return
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(**client_kwargs(s), request_timeout_ms=10_000)
    except KafkaError as exc:
        raise TransportError(f"cannot reach Kafka at {','.join(s.bootstrap_servers)}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            admin.create_topics(
                {t: {"num_partitions": s.partitions, "replication_factor": s.replication_factor}
                 for t in missing}, raise_errors=False)
            log.info("created Kafka topics %s (%d partitions, replication %d)",
                     ", ".join(missing), s.partitions, s.replication_factor)
            _await_leaders(admin, missing)
    except KafkaError as exc:
        raise TransportError(f"cannot create Kafka topics {topics}: {exc}") from None
    finally:
        admin.close()


def _await_leaders(admin: Any, topics: list[str], timeout_s: float = 30.0) -> None:
    """Wait until every partition of the new ``topics`` has a leader: a consumer that joins its group
    while the broker is still creating them can be handed no partitions of them, and a producer gets
    UNKNOWN_TOPIC_OR_PARTITION (a loaded broker takes seconds)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    pending = list(topics)
    while pending and time.monotonic() < deadline:
        try:
            described = admin.describe_topics(pending)
        except KafkaError:
            described = []
        ready = {t["name"] for t in described if t.get("error_code") == 0 and t.get("partitions")
                 and all(p.get("leader_id", -1) >= 0 for p in t["partitions"])}
        pending = [t for t in pending if t not in ready]
        if pending:
            time.sleep(0.1)
    if pending:
        log.warning("Kafka topics %s have no leader after %.0fs; going on (clients retry)", ", ".join(pending),
                    timeout_s)
