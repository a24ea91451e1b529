"""The load: realistic GenAI chat spans as pre-built OTLP/HTTP protobuf requests, and the senders
that post them (``--concurrency`` threads, 503/429 retried after Retry-After and counted)."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field

__all__ = ["WARMUP_SERVICE", "SendResult", "build_requests", "send_all"]

WARMUP_SERVICE = "bench-warmup"

SENTENCES = [
    "The quarterly report shows revenue growth in every region except the northeast.",
    "Please summarize the attached meeting notes in three short bullet points.",
    "Our customers in Germany have asked for invoices that include the VAT number.",
    "The deployment failed because the container image could not be pulled from the registry.",
    "Write a polite reply declining the invitation but suggesting a call next week.",
    "Translate the following paragraph into Spanish while keeping the formal tone.",
    "The patient reported mild headaches after the second dose of the medication.",
    "Explain the difference between a process and a thread to a junior engineer.",
    "The warehouse inventory count was off by twelve pallets on Tuesday morning.",
    "Draft a product description for a waterproof hiking backpack with a 30 liter capacity.",
    "List the main risks of migrating the billing database during the holiday season.",
    "The train to Lyon was delayed by forty minutes because of a signal failure.",
    "Can you recommend three books about the history of the printing press?",
    "Our support team resolved most tickets within four hours last month.",
    "Rewrite this function so that it no longer allocates memory inside the loop.",
    "The contract renewal is due at the end of March and requires legal review.",
    "Describe the water cycle for a class of ten-year-old students.",
    "The new onboarding flow reduced the drop-off rate on the second screen.",
    "Compare the battery life of the two laptops under a typical office workload.",
    "A customer says the discount code was applied twice on the same order.",
    "Give me a recipe for a vegetarian lasagna that serves six people.",
    "The sensor readings drift upward by about two degrees every afternoon.",
    "Outline a study plan for passing the cloud architecture certification in eight weeks.",
    "The marketing team wants a catchy subject line for the spring newsletter.",
    "Identify any personally identifiable information in the text below and redact it.",
    "The server logs show repeated timeouts when the cache cluster is under load.",
    "Suggest names for a coffee shop that also sells secondhand books.",
    "The hiring committee will interview the final two candidates on Friday.",
]
ANSWERS = [
    "Here is a concise summary of the main points.",
    "Revenue grew in most regions, driven mainly by renewals and the new enterprise tier.",
    "The northeast declined slightly because two large accounts delayed their purchases.",
    "I would recommend retrying the deployment after checking the registry credentials.",
    "Thank you for the kind invitation; unfortunately I will be travelling that week.",
    "A process has its own memory space, while threads share the memory of their process.",
    "The most likely cause is a misconfigured timeout between the service and the cache.",
    "First, verify the inventory records; second, reconcile them with the shipping logs.",
    "This backpack keeps your gear dry on long trails and fits comfortably on any frame.",
    "The main risks are data loss, extended downtime and inconsistent invoices.",
    "Both laptops last roughly nine hours, but the lighter model charges faster.",
    "The discount was applied twice because the cart was submitted from two tabs.",
    "Preheat the oven to 190 degrees and layer the sauce, pasta and vegetables evenly.",
    "The drift follows the afternoon sun, so the sensor housing may need shading.",
    "Week one covers networking fundamentals; week two focuses on identity and access.",
    "I redacted two names, one phone number and an email address from the text.",
    "Some options are Chapter and Bean, The Reading Cup, and Second Pour Books.",
    "Let me know if you would like a more detailed breakdown by month.",
    "In short, the change is safe to roll out gradually behind a feature flag.",
    "I could not find any evidence of a security incident in the provided logs.",
]
MODELS = ["llama-3-8b"]
SERVICES = ["chat-gateway", "support-bot", "doc-summarizer"]


def _text(rng: random.Random, pool: list[str], lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    return " ".join(rng.sample(pool, n))


def build_requests(n_spans: int, batch: int, seed: int, service_override: str | None = None) -> list[tuple[bytes, int]]:
    """``(body, span_count)`` per request; realistic GenAI chat spans, unique random ids."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    from monitor.sidecar.proxy.spans import kv  # an OTLP attribute from a Python value

    rng = random.Random(seed)
    ids = random.SystemRandom()

    out: list[tuple[bytes, int]] = []
    now_ns = time.time_ns()
    made = 0
    seen: set[bytes] = set()
    while made < n_spans:
        count = min(batch, n_spans - made)
        service = service_override or SERVICES[len(out) % len(SERVICES)]
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend([
            kv("service.name", service),
            kv("service.version", "2.3.1"),
            kv("service.instance.id", f"{service}-{len(out) % 4}"),
            kv("host.name", f"gpu-node-{len(out) % 3 + 1}"),
            kv("deployment.environment.name", "production"),
            kv("telemetry.sdk.language", "python"),
            kv("telemetry.sdk.name", "opentelemetry"),
            kv("telemetry.sdk.version", "1.30.0"),
        ])
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.openai_v2"
        ss.scope.version = "2.1b0"
        for _ in range(count):
            trace_id = ids.getrandbits(128).to_bytes(16, "big")
            span_id = ids.getrandbits(64).to_bytes(8, "big")
            if span_id in seen:  # astronomically unlikely; keep the promise anyway
                continue
            seen.add(span_id)
            model = rng.choice(MODELS)
            prompt = _text(rng, SENTENCES, 3, 6)
            completion = _text(rng, ANSWERS, 3, 6)
            finish = "length" if rng.random() < 0.05 else "stop"
            in_tok = len(prompt) // 4 + rng.randint(0, 20)
            out_tok = len(completion) // 4 + rng.randint(0, 20)
            duration_ns = rng.randint(150, 9000) * 1_000_000
            start = now_ns - rng.randint(0, 300) * 1_000_000_000 - duration_ns
            span = ss.spans.add()
            span.trace_id = trace_id
            span.span_id = span_id
            span.name = f"chat {model}"
            span.kind = Span.SPAN_KIND_CLIENT
            span.start_time_unix_nano = start
            span.end_time_unix_nano = start + duration_ns
            attrs = [
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.provider.name", "vllm"),
                kv("gen_ai.request.model", model),
                kv("gen_ai.response.model", model),
                kv("gen_ai.request.temperature", rng.choice([0.0, 0.2, 0.7, 1.0])),
                kv("gen_ai.request.max_tokens", rng.choice([256, 512, 1024, 2048])),
                kv("gen_ai.usage.input_tokens", in_tok),
                kv("gen_ai.usage.output_tokens", out_tok),
                kv("gen_ai.response.finish_reasons", [finish]),
                kv("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": prompt}]}])),
                kv("gen_ai.output.messages", json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": completion}],
                      "finish_reason": finish}])),
            ]
            if rng.random() < 0.35:  # plain (non-GenAI, non-OpenInference) attributes on some spans
                attrs += [
                    kv("server.address", "vllm.internal"),
                    kv("server.port", 8000),
                    kv("gen_ai.response.id", f"chatcmpl-{ids.getrandbits(96):024x}"),
                    kv("gen_ai.request.top_p", 0.9),
                    kv("user.id", f"user-{rng.randint(1, 500)}"),
                    kv("session.id", f"sess-{rng.randint(1, 2000):05d}"),
                ]
            span.attributes.extend(attrs)
            if rng.random() < 0.01:
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = "upstream timeout"
                span.attributes.append(kv("error.type", "timeout"))
            made += 1
        out.append((req.SerializeToString(), len(ss.spans)))
    return out


# ----------------------------------------------------------------------------- sending

@dataclass
class SendResult:
    acked_spans: int = 0
    rejected_spans: int = 0          # partial_success.rejected_spans in 200 answers
    requests_ok: int = 0
    retries_503: int = 0
    retries_429: int = 0
    retry_sleep_s: float = 0.0
    connection_retries: int = 0
    errors: list[str] = field(default_factory=list)
    failed_spans: int = 0
    first_send: float = 0.0
    last_ack: float = 0.0


def send_all(url: str, bodies: list[tuple[bytes, int]], concurrency: int, deadline: float,
             headers: dict[str, str] | None = None) -> tuple[SendResult, threading.Event, threading.Event]:
    """Start the sender threads; returns (result, go, done). Set ``go`` to start; ``done`` is set at the end."""
    import requests
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    res = SendResult()
    lock = threading.Lock()
    go, done = threading.Event(), threading.Event()
    it = iter(range(len(bodies)))
    remaining = [concurrency]
    hdrs = {"Content-Type": "application/x-protobuf", **(headers or {})}

    def worker() -> None:
        session = requests.Session()
        go.wait()
        try:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                body, n = bodies[i]
                attempts = 0
                while True:
                    if time.perf_counter() > deadline:
                        with lock:
                            res.errors.append(f"request {i}: gave up at the deadline")
                            res.failed_spans += n
                        break
                    try:
                        r = session.post(url, data=body, headers=hdrs, timeout=(10, 300))
                    except requests.RequestException as exc:
                        attempts += 1
                        with lock:
                            res.connection_retries += 1
                        if attempts > 5:
                            with lock:
                                res.errors.append(f"request {i}: {type(exc).__name__}: {exc}")
                                res.failed_spans += n
                            break
                        time.sleep(0.5 * attempts)
                        session = requests.Session()
                        continue
                    if r.status_code == 200:
                        rejected = 0
                        try:
                            resp = ExportTraceServiceResponse.FromString(r.content)
                            rejected = resp.partial_success.rejected_spans
                        except Exception:
                            pass
                        now = time.perf_counter()
                        with lock:
                            res.requests_ok += 1
                            res.acked_spans += n - rejected
                            res.rejected_spans += rejected
                            res.last_ack = max(res.last_ack, now)
                        break
                    if r.status_code in (503, 429):
                        try:
                            wait = float(r.headers.get("Retry-After", "1"))
                        except ValueError:
                            wait = 1.0
                        wait = max(0.0, min(wait, 60.0))
                        with lock:
                            if r.status_code == 503:
                                res.retries_503 += 1
                            else:
                                res.retries_429 += 1
                            res.retry_sleep_s += wait
                        time.sleep(wait)
                        continue
                    with lock:
                        res.errors.append(f"request {i}: HTTP {r.status_code}: {r.text[:300]!r}")
                        res.failed_spans += n
                    break
        finally:
            session.close()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    for k in range(concurrency):
        threading.Thread(target=worker, name=f"sender-{k}", daemon=True).start()
    return res, go, done


