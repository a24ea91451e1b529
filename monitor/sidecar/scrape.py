"""The model server's Prometheus ``/metrics`` page as OTLP metrics.

Each scrape yields one ``ExportMetricsServiceRequest`` (scope ``monitor.scrape``) with two views:

* **raw**: every family on the page under its original name, as the
  OpenTelemetry Collector's Prometheus receiver would translate it: gauge ->
  Gauge, counter -> cumulative monotonic Sum (the name keeps its ``_total``,
  exactly as written on the page), histogram -> cumulative Histogram (``le``
  buckets de-cumulated, ``+Inf`` last), summary -> Summary, anything else
  (untyped, info, stateset, gaugehistogram) -> one Gauge per sample name.
  Labels become attributes. ``*_created`` series that belong to a counter,
  histogram or summary are not exported on their own: they are that
  series' start time.
* **normalised**: the signals every dashboard needs under one name whatever
  the engine (:data:`NORMALISED`), with attribute ``engine``
  (vllm|tgi|sglang|llamacpp), ``gen_ai.request.model`` from the
  ``model_name`` label, and the source series' other labels (a source label
  called ``engine`` -- vLLM's engine index -- becomes ``engine.index``).

Data points carry the scrape time; cumulative points start at the series'
``_created`` time when the page has one, else at ``process_start_time_seconds``,
else 0 (unknown). Gauges have no start time.
"""

from __future__ import annotations

import http.client
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from monitor import __version__
from monitor.otlp.metrics_builder import Hist, MetricsBuilder

if TYPE_CHECKING:
    from monitor.config import ScrapeSettings

__all__ = [
    "page_to_otlp", "detect_engine", "MetricsScraper", "NORMALISED", "ENGINES",
    "SCOPE_NAME",
]

log = logging.getLogger("monitor.sidecar.scrape")

SCOPE_NAME = "monitor.scrape"
ENGINES = ("vllm", "tgi", "sglang", "llamacpp")
_PREFIXES = (("vllm:", "vllm"), ("sglang:", "sglang"), ("llamacpp:", "llamacpp"), ("tgi_", "tgi"))
MAX_PAGE_BYTES = 32 * 1024 * 1024


# --------------------------------------------------------------------------- parsing


def _key(labels: dict[str, str], drop: str | None = None) -> tuple:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _to_count(v: float) -> int:
    if v != v or v <= 0:
        return 0
    if math.isinf(v):
        return 0
    return int(round(v))


def _parse_le(s: str) -> float:
    return float(s)  # "+Inf", "1.0", "1e-3" all parse


def _histogram_series(samples: Iterable[Any], base: str) -> dict[tuple, dict]:
    """Histogram samples grouped per label set (without ``le``)."""
    series: dict[tuple, dict] = {}
    for s in samples:
        if s.name == base + "_bucket":
            le = s.labels.get("le")
            if le is None:
                continue
            k = _key(s.labels, "le")
            entry = series.setdefault(k, {"labels": {a: b for a, b in k}, "buckets": [], "count": None, "sum": None})
            try:
                entry["buckets"].append((_parse_le(le), s.value))
            except ValueError:
                continue
        elif s.name in (base + "_count", base + "_sum"):
            k = _key(s.labels)
            entry = series.setdefault(k, {"labels": dict(s.labels), "buckets": [], "count": None, "sum": None})
            entry["count" if s.name.endswith("_count") else "sum"] = s.value
    return series


def _make_hist(entry: dict, start_ns: int) -> Hist:
    buckets = sorted(entry["buckets"])
    bounds: list[float] = []
    counts: list[int] = []
    prev = 0.0
    inf_cum = None
    for le, cum in buckets:
        if math.isinf(le):
            inf_cum = cum
            continue
        bounds.append(le)
        counts.append(_to_count(cum - prev))
        prev = max(prev, cum)
    total = entry["count"]
    if inf_cum is None:
        inf_cum = total if total is not None else prev
    counts.append(_to_count(inf_cum - prev))
    count = _to_count(total if total is not None else inf_cum)
    return Hist(bounds, counts, count, entry["sum"], start_ns)


def detect_engine(names: Iterable[str]) -> str | None:
    """The engine whose metric prefix appears most on the page (None when none does)."""
    votes: dict[str, int] = defaultdict(int)
    for name in names:
        for prefix, engine in _PREFIXES:
            if name.startswith(prefix):
                votes[engine] += 1
                break
    if not votes:
        return None
    return max(votes.items(), key=lambda kv: kv[1])[0]


_TYPE_LINE = re.compile(r"^#\s*TYPE\s+(\S+)\s+counter\s*$", re.M)


# --------------------------------------------------------------------------- normalised view


@dataclass(frozen=True)
class _Norm:
    target: str
    kind: str  # gauge | sum | histogram
    unit: str
    sources: dict[str, tuple[str, ...]]  # engine -> source names, first present wins
    extra: tuple[tuple[str, str], ...] = ()  # fixed attributes
    description: str = ""


def _tokens(kind: str, direction: str, sources: dict[str, tuple[str, ...]]) -> _Norm:
    return _Norm("monitor.server.tokens", kind, "{token}", sources, (("gen_ai.token.type", direction),),
                 "Tokens processed by the server (cumulative), by gen_ai.token.type")


NORMALISED: tuple[_Norm, ...] = (
    _Norm("monitor.server.requests.waiting", "gauge", "{request}", {
        "vllm": ("vllm:num_requests_waiting",), "tgi": ("tgi_queue_size",),
        "sglang": ("sglang:num_queue_reqs",), "llamacpp": ("llamacpp:requests_deferred",)},
        description="Requests queued, not yet scheduled"),
    _Norm("monitor.server.requests.running", "gauge", "{request}", {
        "vllm": ("vllm:num_requests_running",), "tgi": ("tgi_batch_current_size",),
        "sglang": ("sglang:num_running_reqs",), "llamacpp": ("llamacpp:requests_processing",)},
        description="Requests being processed"),
    _Norm("monitor.server.kv_cache.usage", "gauge", "1", {
        "vllm": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "sglang": ("sglang:token_usage",), "llamacpp": ("llamacpp:kv_cache_usage_ratio",)},
        description="Share of the KV cache in use (0..1)"),
    _Norm("monitor.server.preemptions", "sum", "{request}", {"vllm": ("vllm:num_preemptions",)},
          description="Requests preempted (cumulative)"),
    _tokens("sum", "input", {"vllm": ("vllm:prompt_tokens",), "sglang": ("sglang:prompt_tokens",),
                             "llamacpp": ("llamacpp:prompt_tokens",)}),
    _tokens("sum", "output", {"vllm": ("vllm:generation_tokens",), "sglang": ("sglang:generation_tokens",),
                              "llamacpp": ("llamacpp:tokens_predicted",)}),
    _Norm("monitor.server.tokens_per_second", "gauge", "{token}/s",
          {"llamacpp": ("llamacpp:prompt_tokens_seconds",)}, (("gen_ai.token.type", "input"),),
          "Recent throughput as reported by the server"),
    _Norm("monitor.server.tokens_per_second", "gauge", "{token}/s",
          {"llamacpp": ("llamacpp:predicted_tokens_seconds",), "sglang": ("sglang:gen_throughput",)},
          (("gen_ai.token.type", "output"),), "Recent throughput as reported by the server"),
    _Norm("gen_ai.server.time_to_first_token", "histogram", "s", {
        "vllm": ("vllm:time_to_first_token_seconds",), "sglang": ("sglang:time_to_first_token_seconds",)},
        description="Time to generate the first token"),
    _Norm("gen_ai.server.request.duration", "histogram", "s", {
        "vllm": ("vllm:e2e_request_latency_seconds",), "sglang": ("sglang:e2e_request_latency_seconds",),
        "tgi": ("tgi_request_duration",)}, description="End-to-end request duration"),
    _Norm("gen_ai.server.time_per_output_token", "histogram", "s", {
        "vllm": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "sglang": ("sglang:time_per_output_token_seconds",),
        "tgi": ("tgi_request_mean_time_per_token_duration",)},
        description="Time per output token after the first"),
    _Norm("monitor.server.request.queue_time", "histogram", "s", {
        "vllm": ("vllm:request_queue_time_seconds",), "tgi": ("tgi_request_queue_duration",)},
        description="Time a request waited before being scheduled"),
    _Norm("monitor.server.request.prefill_time", "histogram", "s", {
        "vllm": ("vllm:request_prefill_time_seconds",)}, description="Time in prefill"),
    _Norm("monitor.server.request.decode_time", "histogram", "s", {
        "vllm": ("vllm:request_decode_time_seconds",)}, description="Time in decode"),
    _Norm("monitor.server.request.inference_time", "histogram", "s", {
        "vllm": ("vllm:request_inference_time_seconds",), "tgi": ("tgi_request_inference_duration",)},
        description="Time running in the model (prefill + decode)"),
)
"""Normalised signals. Source names are prometheus_client family names (counters without ``_total``)."""


def _norm_attrs(engine: str, labels: dict[str, str], extra: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"engine": engine}
    model = labels.get("model_name")
    if model:
        attrs["gen_ai.request.model"] = model
    for k, v in labels.items():
        if k == "model_name":
            continue
        attrs["engine.index" if k == "engine" else k] = v
    attrs.update(extra)
    return attrs


# --------------------------------------------------------------------------- the conversion


def page_to_otlp(text: str, engine: str = "auto", resource: dict[str, str] | None = None,
                 now_ns: int | None = None) -> ExportMetricsServiceRequest:
    """One Prometheus text page as OTLP metrics: raw families plus the normalised view.

    Raises ``ValueError`` when the page is not Prometheus text exposition.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on garbage
        raise ValueError(f"not a Prometheus text page: {exc!r}") from None

    typed_counters = set(_TYPE_LINE.findall(text))

    # Families by name (a parser quirk yields one family per stray sample).
    by_name: dict[str, Any] = {}
    order: list[str] = []
    for fam in families:
        seen = by_name.get(fam.name)
        if seen is None:
            by_name[fam.name] = fam
            order.append(fam.name)
        elif seen.type == fam.type or fam.type in ("untyped", "unknown"):
            seen.samples.extend(fam.samples)

    cumulative = {n for n, f in by_name.items() if f.type in ("counter", "histogram", "summary")}

    # Process start, and the _created series that are start times of cumulative series.
    process_start_ns = 0
    created: dict[tuple[str, tuple], int] = {}
    created_families: set[str] = set()
    for name, fam in by_name.items():
        if name == "process_start_time_seconds" and fam.samples:
            v = fam.samples[0].value
            if v == v and v > 0 and not math.isinf(v):
                process_start_ns = int(v * 1e9)
        if fam.type in ("counter", "histogram", "summary"):
            for s in fam.samples:  # OpenMetrics-style: _created inside the family
                if s.name == name + "_created":
                    created[(name, _key(s.labels))] = int(s.value * 1e9)
        elif name.endswith("_created") and name[: -len("_created")] in cumulative:
            base = name[: -len("_created")]
            created_families.add(name)
            for s in fam.samples:
                if s.name == name and s.value == s.value and s.value > 0:
                    created[(base, _key(s.labels))] = int(s.value * 1e9)

    def start_of(base: str, labels: dict[str, str]) -> int:
        return created.get((base, _key(labels)), process_start_ns)

    if engine == "auto":
        detected = detect_engine(order)
    else:
        detected = engine

    out = MetricsBuilder(resource, SCOPE_NAME)
    histograms: dict[str, dict[tuple, dict]] = {}

    for name in order:
        if name in created_families:
            continue
        fam = by_name[name]
        doc = fam.documentation or ""
        if fam.type == "counter":
            raw = name + "_total" if (name + "_total") in typed_counters or name not in typed_counters else name
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                out.counter(raw, s.value, dict(s.labels), now_ns, start_of(name, s.labels), description=doc)
        elif fam.type == "gauge":
            for s in fam.samples:
                out.gauge(s.name, s.value, dict(s.labels), now_ns, description=doc)
        elif fam.type == "histogram":
            series = _histogram_series(fam.samples, name)
            histograms[name] = series
            for entry in series.values():
                out.histogram(name, _make_hist(entry, start_of(name, entry["labels"])), entry["labels"],
                              now_ns, description=doc)
        elif fam.type == "summary":
            groups: dict[tuple, dict] = {}
            for s in fam.samples:
                if s.name == name:
                    g = groups.setdefault(_key(s.labels, "quantile"), {"q": [], "count": 0.0, "sum": None})
                    try:
                        g["q"].append((float(s.labels["quantile"]), s.value))
                    except (KeyError, ValueError):
                        continue
                elif s.name in (name + "_count", name + "_sum"):
                    g = groups.setdefault(_key(s.labels), {"q": [], "count": 0.0, "sum": None})
                    g["count" if s.name.endswith("_count") else "sum"] = s.value
            for k, g in groups.items():
                labels = dict(k)
                out.summary(name, _to_count(g["count"]), g["sum"], sorted(g["q"]), labels, now_ns,
                            start_of(name, labels), description=doc)
        else:  # untyped, unknown, info, stateset, gaugehistogram: numeric samples as gauges
            for s in fam.samples:
                if isinstance(s.value, (int, float)):
                    out.gauge(s.name, s.value, dict(s.labels), now_ns, description=doc)

    if detected in ENGINES:
        for norm in NORMALISED:
            for source in norm.sources.get(detected, ()):
                fam = by_name.get(source)
                if fam is None:
                    continue
                if norm.kind == "histogram":
                    if fam.type != "histogram":
                        continue
                    for entry in histograms.get(source, {}).values():
                        out.histogram(norm.target, _make_hist(entry, start_of(source, entry["labels"])),
                                      _norm_attrs(detected, entry["labels"], norm.extra), now_ns,
                                      unit=norm.unit, description=norm.description)
                else:
                    for s in fam.samples:
                        if s.name.endswith("_created") or s.name != (source + "_total" if fam.type == "counter"
                                                                     else source):
                            continue
                        attrs = _norm_attrs(detected, s.labels, norm.extra)
                        if norm.kind == "gauge":
                            out.gauge(norm.target, s.value, attrs, now_ns, unit=norm.unit,
                                      description=norm.description)
                        else:
                            out.counter(norm.target, s.value, attrs, now_ns, start_of(source, s.labels),
                                        unit=norm.unit, description=norm.description)
                break  # first present source wins (newer name before the older one)

    return out.request


# --------------------------------------------------------------------------- the scraper


class MetricsScraper:
    """GETs the server's ``/metrics`` every ``interval_s`` and emits it as OTLP metrics.

    Never raises into its caller and never stops on its own: an unreachable or
    unparsable page is logged once per outage (warning), and once when it is
    back (info).
    """

    timeout_s = 5.0

    def __init__(self, settings: ScrapeSettings, emitter, resource: dict[str, str]):
        self.settings = settings
        self.emitter = emitter
        self.resource = dict(resource)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._failures = 0
        self._engine_logged: str | None = None
        self.scrapes = 0
        """Successful scrapes so far."""

    def start(self) -> None:
        if not self.settings.url:
            log.info("metrics scraping off (scrape.url not set)")
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="monitor-scrape", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Prompt: wakes the loop at once; an HTTP request in flight is abandoned (daemon thread)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._collect()
                if msg is not None and not self._stop.is_set():  # not after stop() returned
                    self._emit(msg)
            except Exception:  # never let a bug end the loop
                log.exception("metrics scrape of %s failed unexpectedly", self.settings.url)
            self._stop.wait(self.settings.interval_s)

    def _fetch(self) -> str:
        req = urllib.request.Request(self.settings.url, headers={
            "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
            "User-Agent": f"llm-monitor/{__version__}",
        })
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            body = resp.read(MAX_PAGE_BYTES + 1)
            if len(body) > MAX_PAGE_BYTES:
                raise ValueError(f"page larger than {MAX_PAGE_BYTES} bytes")
            charset = resp.headers.get_content_charset() or "utf-8"
        return body.decode(charset, errors="replace")

    def scrape_once(self) -> bool:
        """One scrape: True when a page was converted and handed to the emitter."""
        msg = self._collect()
        if msg is None:
            return False
        self._emit(msg)
        return True

    def _emit(self, msg: ExportMetricsServiceRequest) -> None:
        self.scrapes += 1
        self.emitter.emit("metrics", msg)

    def _collect(self) -> ExportMetricsServiceRequest | None:
        """Fetch and convert the page; None (logged once per outage) when that fails."""
        url = self.settings.url
        try:
            text = self._fetch()
            msg = page_to_otlp(text, self.settings.engine, self.resource)
            n = sum(len(sm.metrics) for rm in msg.resource_metrics for sm in rm.scope_metrics)
            if n == 0:
                raise ValueError("the page has no metrics")
        except (OSError, ValueError, LookupError, http.client.HTTPException) as exc:
            self._failures += 1
            if not self._failing:
                self._failing = True
                log.warning("cannot scrape model server metrics from %s: %s (retrying every %gs)",
                            url, _describe(exc), self.settings.interval_s)
            return None
        if self._failing:
            log.info("scraping model server metrics from %s again (after %d failed attempt%s)",
                     url, self._failures, "" if self._failures == 1 else "s")
        self._failing = False
        self._failures = 0
        engine = self.settings.engine
        if engine == "auto":
            engine = detect_engine(_metric_names(msg)) or "unknown"
        if self._engine_logged != engine:
            self._engine_logged = engine
            log.info("scraping %s every %gs (engine: %s)", url, self.settings.interval_s, engine)
        return msg


def _metric_names(msg: ExportMetricsServiceRequest) -> list[str]:
    return [m.name for rm in msg.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
