"""llm-monitor: observability and drift monitoring for self-hosted model servers.

Data flow (each stage is a subpackage): ``receiver`` (OTLP in) -> ``transport``
(Kafka with a durable spool, or an in-process queue) -> ``ingest`` (decode,
normalise, batch) -> ``store`` (ClickHouse: chdb or a server). The canonical
record of one model request is :class:`monitor.events.InferenceEvent`.
"""

from monitor.config import Settings, load
from monitor.errors import ConfigError, MonitorError
from monitor.events import InferenceEvent

__all__ = ["Settings", "load", "InferenceEvent", "MonitorError", "ConfigError", "__version__"]

__version__ = "0.1.0"
