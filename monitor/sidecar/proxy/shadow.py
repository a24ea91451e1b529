"""Shadow traffic: a share of the requests to model A sent again to a candidate B, off the request path.

The pipeline process turns each capture record into a span (:mod:`~monitor.sidecar.proxy.intake`);
for a record whose requested model matches a ``proxy.shadow`` rule it then offers the record here.
That is after the client's response ended, in another process than the proxy (in ``monitor up``),
so the client only ever sees A's answer and A's request path does no extra work. The shadow copy:

- is the client's request body with ``model`` set to the rule's ``to`` (and, for an OpenAI stream
  that did not ask for it, ``stream_options.include_usage``), sent to the upstream that
  ``proxy.routes`` gives B (else ``proxy.upstream``), with the route's key for a managed endpoint;
  the client's own credentials are not in the record and never go anywhere;
- carries ``traceparent`` with A's trace id and a span id of its own, so B's engine span joins it;
- is recorded as a :class:`~monitor.sidecar.proxy.record.CaptureRecord` with its own timings
  (TTFT from when each chunk arrived here), attribute ``monitor.shadow_of`` = A's span id, and goes
  through the same span building, engine join, cost, redaction and ingest as A's record: one
  ``inference_events`` row, ``shadow_of`` set, same ``trace_id`` as A's.

Bounds, each counted in ``monitor_shadow_requests_total{outcome}`` when it stops a copy: ``share``
(deterministic by trace id, not counted), ``max_per_s`` (token bucket: ``rate``),
``max_concurrency`` (copies in flight: ``concurrency``), ``max_managed_tokens_per_day`` (tokens
used by copies to a managed endpoint this UTC day: ``budget``; the check is made before sending,
so copies in flight may pass it by at most their own tokens), a request body cut at
``proxy.max_capture_bytes`` (``truncated``). Answers: ``ok``, ``error`` (HTTP >= 400 or a
connection failure), ``timeout`` (``timeout_s``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from monitor.config import ProxySettings, ShadowRule
from monitor.otlp.model_identity import MANAGED, SHADOW_OF_ATTR
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.proxy._routes import model_of
from monitor.sidecar.proxy.record import CaptureRecord

__all__ = ["RULE_ATTR", "ShadowSender"]

log = logging.getLogger("monitor.proxy")

RULE_ATTR = "monitor.shadow.rule"
"""Index of the ``proxy.shadow`` rule that made a shadow record (for its token budget)."""
_READ = 64 * 1024


class _Rule:
    """One ``proxy.shadow`` rule with its running bounds."""

    def __init__(self, index: int, config: ShadowRule, settings: ProxySettings) -> None:
        self.index = index
        self.config = config
        route = settings.route_for(config.to)
        self.base = (route.upstream if route is not None else settings.upstream or "").rstrip("/")
        self.managed = route is not None and route.kind == MANAGED
        key = route.api_key() if route is not None else None
        self.auth = f"Bearer {key}" if key else None
        self.tokens = config.max_per_s * 2
        self.refilled = time.monotonic()
        self.in_flight = 0
        self.day = ""
        self.spent = 0

    def matches(self, model: str) -> bool:
        m = self.config.model
        return model == m or fnmatch.fnmatchcase(model, m)

    def take_token(self, now: float) -> bool:
        burst = self.config.max_per_s * 2
        self.tokens = min(burst, self.tokens + (now - self.refilled) * self.config.max_per_s)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def budget_left(self) -> bool:
        if not self.managed:
            return True
        self._roll()
        return self.spent < self.config.max_managed_tokens_per_day

    def _roll(self) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime())
        if day != self.day:
            self.day, self.spent = day, 0


def sampled(trace_id: bytes, share: float) -> bool:
    """Deterministic by trace id: the same request is always (or never) shadowed."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    return int.from_bytes(hashlib.blake2b(trace_id, digest_size=8, person=b"shadow").digest(), "big") / 2 ** 64 < share


class ShadowSender:
    """Sends the shadow copies on an event loop of its own (a daemon thread); ``deliver(record)`` gets
    each copy's record (from that thread) and ``announce(trace_id, span_id)`` is called before a copy
    goes out, as the proxy announces its own requests to the engine join."""

    def __init__(self, settings: ProxySettings, metrics: SelfMetrics, deliver: Callable[[CaptureRecord], None],
                 announce: Callable[[bytes, bytes], None] | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.deliver = deliver
        self.announce = announce
        self.rules = [_Rule(i, r, settings) for i, r in enumerate(settings.shadow)]
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self._tasks: set[asyncio.Task] = set()

    def __bool__(self) -> bool:
        return bool(self.rules)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.rules or self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="monitor-shadow", daemon=True)
        self._thread.start()
        for r in self.rules:
            log.info("shadow traffic: %.0f%% of the requests to %s also go to %s (%s%s), at most %g/s, %d at once",
                     100 * r.config.share, r.config.model, r.config.to, r.base,
                     f", managed: {r.config.max_managed_tokens_per_day} tokens a day" if r.managed else "",
                     r.config.max_per_s, r.config.max_concurrency)

    def stop(self, timeout: float = 5.0) -> None:
        """Let copies in flight finish for up to ``timeout`` seconds, cancel the rest (recorded as
        ``shadow_stopped``), close the loop. Safe without ``start()`` and more than once."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def drain() -> None:
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=2.0)
            if self._session is not None:
                await self._session.close()
        try:
            asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 5.0)
        except Exception:
            log.exception("shadow traffic: copies in flight did not end cleanly")
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    # -- from the intake's worker thread ------------------------------------------------------------
    def offer(self, rec: CaptureRecord) -> None:
        """Send a copy of ``rec`` to every candidate whose rule matches and whose bounds allow it.
        Never blocks and never raises (what it skips is counted)."""
        if self._loop is None or SHADOW_OF_ATTR in rec.attributes or rec.api not in ("openai", "ollama"):
            return
        model = model_of(rec.request_body)
        if not model:
            return
        now = time.monotonic()
        for rule in self.rules:
            if not rule.matches(model) or rule.config.to == model or not sampled(rec.trace_id, rule.config.share):
                continue
            with self._lock:
                why = None
                if rec.request_size > len(rec.request_body):
                    why = "truncated"
                elif rule.in_flight >= rule.config.max_concurrency:
                    why = "concurrency"
                elif not rule.budget_left():
                    why = "budget"
                elif not rule.take_token(now):
                    why = "rate"
                else:
                    rule.in_flight += 1
            if why is not None:
                self._count(why)
                continue
            try:
                body, usage_added = _shadow_body(rec, rule.config.to)
            except ValueError:
                with self._lock:
                    rule.in_flight -= 1
                self._count("unparsable")
                continue
            self.metrics.shadow_in_flight.inc()
            asyncio.run_coroutine_threadsafe(self._spawn(rule, rec, body, usage_added), self._loop)

    def spent(self, rule_index: int, tokens: int) -> None:
        """A copy's answer used ``tokens`` (input + output): count them against its rule's budget."""
        if not 0 <= rule_index < len(self.rules) or tokens <= 0:
            return
        rule = self.rules[rule_index]
        if not rule.managed:
            return
        with self._lock:
            rule._roll()
            rule.spent += tokens
        self.metrics.shadow_managed_tokens.inc(tokens)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.metrics.shadow_requests.labels(outcome).inc()

    # -- on the shadow loop -------------------------------------------------------------------------
    async def _spawn(self, rule: _Rule, rec: CaptureRecord, body: bytes, usage_added: bool) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            copy = await self._send(rule, rec, body, usage_added)
            self._count(copy.error_type if copy.error_type in ("timeout", "shadow_stopped")
                        else ("error" if copy.error_type or copy.status >= 400 else "ok"))
            self.deliver(copy)
        except Exception:
            log.exception("shadow traffic: a copy could not be recorded")
            self._count("error")
        finally:
            with self._lock:
                rule.in_flight -= 1
            self.metrics.shadow_in_flight.dec()
            if task is not None:
                self._tasks.discard(task)

    async def _client(self) -> Any:
        if self._session is None:
            import aiohttp
            self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def _send(self, rule: _Rule, rec: CaptureRecord, body: bytes, usage_added: bool) -> CaptureRecord:
        import aiohttp

        span_id = (int.from_bytes(os.urandom(8), "big") or 1).to_bytes(8, "big")
        if self.announce is not None:
            self.announce(rec.trace_id, span_id)
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                   "traceparent": f"00-{rec.trace_id.hex()}-{span_id.hex()}-01"}
        if rule.auth is not None:
            headers["Authorization"] = rule.auth
        limit = self.settings.max_capture_bytes
        parts: list[bytes] = []
        kept = size = 0
        chunks: list[tuple[int, int]] = []
        status, content_type, headers_ns, error = 0, "", None, ""
        start_ns, t0 = time.time_ns(), time.monotonic_ns()
        session = await self._client()
        try:
            async with asyncio.timeout(rule.config.timeout_s):
                async with session.post(rule.base + rec.path, data=body, headers=headers) as resp:
                    headers_ns = time.monotonic_ns() - t0
                    status, content_type = resp.status, resp.headers.get("Content-Type", "")
                    async for piece in resp.content.iter_chunked(_READ):
                        size += len(piece)
                        if kept < limit:
                            take = piece[:limit - kept]
                            parts.append(take)
                            kept += len(take)
                        chunks.append((time.monotonic_ns() - t0, size))
        except TimeoutError:
            error = "timeout"
        except asyncio.CancelledError:
            error = "shadow_stopped"
        except (aiohttp.ClientError, OSError) as exc:
            error = "upstream_disconnected" if status else "upstream_unreachable"
            log.debug("shadow copy to %s failed: %s", rule.base, exc)
        u = urlsplit(rule.base)
        return CaptureRecord(
            api=rec.api, operation=rec.operation, path=rec.path, trace_id=rec.trace_id, span_id=span_id,
            parent_span_id=rec.span_id, start_ns=start_ns, end_ns=time.time_ns(), request_body=body,
            request_size=len(body), status=status, content_type=content_type, response_body=b"".join(parts),
            response_size=size, chunks=chunks, headers_ns=headers_ns, usage_requested=usage_added,
            error_type=error, upstream=rule.base,
            attributes={"server.address": u.hostname or "",
                        "server.port": u.port or (443 if u.scheme == "https" else 80),
                        SHADOW_OF_ATTR: rec.span_id.hex(), RULE_ATTR: rule.index})


def _shadow_body(rec: CaptureRecord, to: str) -> tuple[bytes, bool]:
    """The copy's body: the client's with ``model`` = ``to``; an OpenAI stream is asked for its usage
    event. Raises ValueError when the body is not a JSON object."""
    try:
        data = orjson.loads(rec.request_body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 (the caller counts ValueError as unparsable)
    data["model"] = to
    usage_added = False
    if rec.api == "openai" and data.get("stream") and rec.operation != "embeddings":
        opts = data.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage")):
            data["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            usage_added = True
    return orjson.dumps(data), usage_added
