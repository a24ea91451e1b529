#!/usr/bin/env python3
"""Redaction cost per span, before and after the Hyperscan prefilter, and a differential check.

Load: ``build_requests(--spans, 256, --seed)`` from bench/ingest.py (realistic
GenAI chat spans, ~1.4 KB each, prompt and completion JSON in
``gen_ai.input.messages`` / ``gen_ai.output.messages``). Each run parses fresh
messages (not timed), then times ``redact_request(redactor, "traces", msg)``
over all of them in one thread. Printed per implementation: median µs/span of
``--runs`` runs (wall clock and this process's CPU time, which a busy machine
disturbs less) and the findings counted.

Implementations:

- ``legacy``: the redactor as it was before the prefilter (kept below, verbatim
  apart from names, for comparison only; it uses the same detectors and walks
  every span in the places redaction covers today, without screening);
- ``new``: :mod:`monitor.redaction` with Hyperscan;
- ``new-no-hs``: the same with Hyperscan hidden (the fallback of other platforms).

Differential check: on the clean load and on ``--pii`` spans with PII injected
into content attributes, message events and log records (plain, JSON with
escapes, nested JSON, non-ASCII, case twins), all three must produce the same
bytes and the same counts; any difference is printed and the exit code is 1.
Last, a 30 MB prompt: how long redaction takes and what the value ends with.

    ~/.cache/llm-monitor/venv/bin/python bench/redaction.py
    ~/.cache/llm-monitor/venv/bin/python bench/redaction.py --spans 20000 --runs 7 --pii 3000
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402

from ingest import build_requests  # noqa: E402
from monitor.config import RedactionSettings  # noqa: E402
from monitor.redaction import SAFE_KEYS, URL_KEYS, Redactor, redact_request  # noqa: E402
from monitor.redaction import _prefilter  # noqa: E402
from monitor.redaction.detectors import DETECTORS, KINDS, PRIORITY, Detector  # noqa: E402

# ----------------------------------------------------------------------------- legacy implementation

class LegacyRedactor:
    """monitor/redaction/redact.py before the prefilter: literal gates per text, every leaf walked."""

    def __init__(self, settings: RedactionSettings | None = None):
        settings = settings or RedactionSettings()
        self.enabled = settings.enabled
        chosen = set(settings.detectors)
        ordered: list[Detector] = [d for name in PRIORITY if name in chosen for d in DETECTORS[name]]
        gates: dict[tuple[tuple[str, ...], bool], int] = {}

        def gate(literals: tuple[str, ...], ci: bool) -> int:
            return gates.setdefault((literals, ci), len(gates)) if literals else -1

        self._plan = tuple((d, gate(d.prefilter, False), gate(d.prefilter_ci, True)) for d in ordered)
        self._gates = tuple(re.compile("|".join(map(re.escape, lits))) for lits, _ in gates)
        names = sorted(set(KINDS.values()), key=len, reverse=True)
        self._placeholder = re.compile(r"\[(?:" + "|".join(map(re.escape, names)) + r")\]")
        self._needs_lower = any(d.prefilter_ci or d.ci is not None for d in ordered)

    def scan(self, text: str) -> list[tuple[str, int, int]]:
        if not self.enabled or len(text) < 6:
            return []
        claimed: bytearray | None = None
        found: list[tuple[str, int, int]] = []
        lower = text
        if self._needs_lower:
            lower = text.lower()
            if len(lower) != len(text):
                lower = text.replace("\u0130", "i").lower()
        if "[" in text:
            for m in self._placeholder.finditer(text):
                if claimed is None:
                    claimed = bytearray(len(text))
                claimed[m.start():m.end()] = b"\x01" * (m.end() - m.start())
        open_: list[bool | None] = [None] * len(self._gates)
        for det, gate, gate_ci in self._plan:
            if gate >= 0:
                if open_[gate] is None:
                    open_[gate] = self._gates[gate].search(text) is not None
                if not open_[gate]:
                    continue
            if gate_ci >= 0:
                if open_[gate_ci] is None:
                    open_[gate_ci] = self._gates[gate_ci].search(lower) is not None
                if not open_[gate_ci]:
                    continue
            for m in det.candidates(text, lower):
                start, end = det.span(m)
                if start >= end or (claimed is not None and 1 in claimed[start:end]):
                    continue
                if det.validate is not None and not det.validate(m, text):
                    continue
                if claimed is None:
                    claimed = bytearray(len(text))
                claimed[start:end] = b"\x01" * (end - start)
                found.append((det.kind, start, end))
        found.sort(key=lambda f: f[1])
        return found

    def redact_with_counts(self, text: str, counts: dict[str, int]) -> str:
        findings = self.scan(text)
        if not findings:
            return text
        parts: list[str] = []
        pos = 0
        for kind, start, end in findings:
            parts += [text[pos:start], f"[{kind}]"]
            pos = end
            counts[kind] = counts.get(kind, 0) + 1
        parts.append(text[pos:])
        return "".join(parts)

    def content(self, text: str, counts: dict[str, int], depth: int = 0) -> str:
        if text.lstrip()[:1] in ("{", "[") and depth < 4:
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, (dict, list)):
                leaf_counts: dict[str, int] = {}
                try:
                    changed = self._walk(data, leaf_counts, depth + 1)
                except RecursionError:
                    return self.redact_with_counts(text, counts)
                for kind, n in leaf_counts.items():
                    counts[kind] = counts.get(kind, 0) + n
                return json.dumps(data, ensure_ascii=False, separators=(",", ":")) if changed else text
        return self.redact_with_counts(text, counts)

    def _walk(self, node: Any, counts: dict[str, int], depth: int) -> bool:
        changed = False
        items: Iterable[tuple[Any, Any]] = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, str):
                new = self.content(value, counts, depth)
                if new is not value and new != value:
                    node[key] = new
                    changed = True
            elif isinstance(value, (dict, list)):
                changed = self._walk(value, counts, depth) or changed
        return changed

    def any_value(self, value: Any, counts: dict[str, int]) -> None:
        kind = value.WhichOneof("value")
        if kind == "string_value":
            s = value.string_value
            new = self.content(s, counts)
            if new is not s:
                value.string_value = new
        elif kind == "array_value":
            for v in value.array_value.values:
                self.any_value(v, counts)
        elif kind == "kvlist_value":
            for kv in value.kvlist_value.values:
                self.any_value(kv.value, counts)


def legacy_redact_request(redactor: LegacyRedactor, signal: str, msg: Any) -> dict[str, int]:
    """Every span and log record walked (no screening), in the places redact_request covers today:
    span names, attributes but SAFE_KEYS, events, links, status messages; log bodies and attributes.
    (URL attributes, which redact_request reads part by part, are left out: the loads here have none.)"""
    counts: dict[str, int] = {}

    def attributes(kvs: Any) -> None:
        for kv in kvs:
            if kv.key not in SAFE_KEYS and kv.key not in URL_KEYS:
                redactor.any_value(kv.value, counts)

    if signal == "traces":
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    name = redactor.content(span.name, counts)
                    if name is not span.name:
                        span.name = name
                    attributes(span.attributes)
                    for event in span.events:
                        attributes(event.attributes)
                    for link in span.links:
                        attributes(link.attributes)
                    if span.status.message:
                        message = redactor.content(span.status.message, counts)
                        if message is not span.status.message:
                            span.status.message = message
    elif signal == "logs":
        for rl in msg.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    if record.HasField("body"):
                        redactor.any_value(record.body, counts)
                    attributes(record.attributes)
    return counts


# ----------------------------------------------------------------------------- load with PII

OPENAI = "sk-proj-Xq3vB8nLp2RtY7wKz9MfH4sJc6DgA1eUo5iTb0NrQxWyZ"
AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0"
       "IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PII_SNIPPETS = [
    "You can reach me at jane.doe@example.com or +1 (415) 555-0132 after 5pm.",
    "My card 4111 1111 1111 1111 was charged twice for order #123456789.",
    "I tried to log in from 203.0.113.42 but got 'invalid password'.",
    "Server 2001:db8:85a3::8a2e:370:7334 refused the connection; fallback 10.0.4.12.",
    f"# .env\nOPENAI_API_KEY={OPENAI}\nDATABASE_URL=postgres://app:S3cr3tPass@10.0.4.12:5432/app",
    f"aws:\n  access_key_id: {AWS}\n  secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    f"GET /v1/models HTTP/1.1\nAuthorization: Bearer {JWT}",
    'db:\n  host: 10.12.0.5\n  password: "Tr0ub4dor&3"',
    "Sure! My password is hunter2, don't tell anyone.",
    "Contact: 415 555 0132 (after 6pm), or text me at 415-555-0177.",
    "Bei Fragen erreichen Sie mich unter +49 30 12345678 oder mobil 0171 2345678. Grüße, Jürgen",
    "Hallo Jürgen, schreib mir an jürgen.weiß@beispiel.de oder ruf an: 030 1234567.",
    "Bonjour, mon adresse est élodie.dupont@exemple.fr et mon numéro est le 06 12 34 56 78.",
    "Llámame al 91 123 45 67 o al +34 612 345 678.",
    "Hola, soy Lucía. Mi móvil 612 34 56 78, teléfono 976 12 34 56.",
    "Votre mot de passe : Azerty#2024. Le montant de 1 299 € sera prélevé le 01/06/2024.",
    "Paid with Mastercard 5500-0000-0000-0004 and Amex 3782 822463 10005.",
    "curl -u admin:Pa55word! https://10.20.30.40:9200/_cluster/health",
    "proxy_set_header Authorization \"Basic dXNlcjpwYXNzd29yZA==\";",
    "OPENAI_API_\u212aEY=sk-test-not-a-real-one-\u212a1234567890abcdef and P\u0130N 1234",  # Kelvin sign, dotted I
    "Tel\u00e9fono: 600 123 456 — emoji 😀 in between, \u2028 line separator",
    "Nothing sensitive here: version 3.11.7, 2024-05-01 12:30:45, order 4711-0815, 1,299.00 €.",
    "Phone-like but not phones: ZIP 94105-1234, SSN-style 123-45-6789, ISBN 978-3-16-148410-0.",
    '{"to": "alice@example.org", "cc": ["bob@example.com"], "note": "call 555-123-4567"}',
    "Already redacted: [EMAIL], [PHONE], password=[API_KEY], Bearer [BEARER_TOKEN].",
    "Please transfer it to DE89 3704 0044 0532 0130 00 or GB82WEST12345698765432 (not DE89 3704 0044 0532 0130 01).",
    "My SSN is 536-22-1234; social security number 219 45 8876; order 487-22-1934.",
    "NI number AB 12 34 56 C, Steuer-ID 85970112430, BSN 436014944, NIR 2 81 01 95 498 510 48, DNI 48815112G.",
    "Passport number: X1234567, Reisepassnummer C01X00T47.",
    "I was born on 12 March 1985; geboren am 12.03.1985; née le 3 mai 1990.",
    "Ship it to 221B Baker Street, London; Musterstraße 12, Berlin; 12 rue de la Paix; Calle Mayor 5.",
    f"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and {AWS}",
]


def _messages_json(rng: random.Random, text: str) -> str:
    """A gen_ai.input.messages value holding ``text``, encoded in one of several ways."""
    style = rng.randrange(5)
    messages = [{"role": "user", "parts": [{"type": "text", "content": text}]}]
    if style == 0:
        return json.dumps(messages)  # \n, \" and \uXXXX escapes for non-ASCII
    if style == 1:
        return json.dumps(messages, ensure_ascii=False, indent=2)
    if style == 2:  # a tool call whose arguments are JSON in a JSON string
        return json.dumps([{"role": "assistant", "parts": [{"type": "tool_call", "name": "send",
                                                              "arguments": json.dumps({"body": text})}]}])
    if style == 3:  # every "@" and "/" escaped, as some encoders do
        return json.dumps(messages).replace("@", "\\u0040").replace("/", "\\/")
    return text  # plain text, not JSON


def build_pii_requests(n_spans: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Traces requests (the realistic load with PII injected into a third of the spans) and logs requests."""
    rng = random.Random(seed)
    traces: list[bytes] = []
    for body, _ in build_requests(n_spans, 256, seed):
        req = ExportTraceServiceRequest.FromString(body)
        for span in req.resource_spans[0].scope_spans[0].spans:
            if rng.random() < 0.33:
                text = " ".join(rng.sample(PII_SNIPPETS, rng.randint(1, 3)))
                for kv in span.attributes:
                    if kv.key == "gen_ai.input.messages":
                        kv.value.string_value = _messages_json(rng, text)
            if rng.random() < 0.1:
                event = span.events.add(name=rng.choice(["gen_ai.user.message", "gen_ai.choice"]))
                event.attributes.add(key="content", value=AnyValue(string_value=rng.choice(PII_SNIPPETS)))
            if rng.random() < 0.05:  # PII outside content: a note, an exception, the status message
                span.attributes.add(key="user.note", value=AnyValue(string_value=rng.choice(PII_SNIPPETS)))
                event = span.events.add(name="exception")
                event.attributes.add(key="exception.message", value=AnyValue(string_value=rng.choice(PII_SNIPPETS)))
                span.status.message = json.dumps({"error": {"message": rng.choice(PII_SNIPPETS)}})
        traces.append(req.SerializeToString())
    logs: list[bytes] = []
    for i in range(max(1, n_spans // 1000)):
        req = ExportLogsServiceRequest()
        records = req.resource_logs.add().scope_logs.add().log_records
        for _ in range(64):
            rec = records.add(body=AnyValue(string_value=rng.choice(PII_SNIPPETS)))
            rec.attributes.add(key="peer", value=AnyValue(string_value=f"10.1.{i % 250}.{rng.randint(1, 250)}"))
        logs.append(req.SerializeToString())
    return traces, logs


# ----------------------------------------------------------------------------- measuring

Impl = tuple[str, Any, Callable[[Any, str, Any], dict[str, int]]]


def implementations() -> list[Impl]:
    saved = _prefilter.hyperscan
    _prefilter.hyperscan = None  # as on a platform without the wheel
    try:
        no_hs = Redactor()
    finally:
        _prefilter.hyperscan = saved
    new = Redactor()
    if not new._screens:
        print("note: hyperscan is not importable here; 'new' runs the pure-Python gates too")
    return [("legacy", LegacyRedactor(), legacy_redact_request), ("new", new, redact_request),
            ("new-no-hs", no_hs, redact_request)]


def time_runs(impl: Impl, bodies: list[bytes], runs: int) -> tuple[float, float, dict[str, int]]:
    """Median wall and CPU µs per span over ``runs``, and the findings of one run."""
    name, redactor, fn = impl
    walls, cpus = [], []
    counts: dict[str, int] = {}
    for _ in range(runs):
        msgs = [ExportTraceServiceRequest.FromString(b) for b in bodies]
        spans = sum(len(ss.spans) for m in msgs for rs in m.resource_spans for ss in rs.scope_spans)
        counts = {}
        w, c = time.perf_counter(), time.process_time()
        for msg in msgs:
            for kind, n in fn(redactor, "traces", msg).items():
                counts[kind] = counts.get(kind, 0) + n
        walls.append((time.perf_counter() - w) / spans * 1e6)
        cpus.append((time.process_time() - c) / spans * 1e6)
    return statistics.median(walls), statistics.median(cpus), counts


def differential(impls: list[Impl], signal: str, bodies: list[bytes]) -> list[str]:
    """Differences between the implementations' outputs (bytes and counts), as lines to print."""
    cls = ExportTraceServiceRequest if signal == "traces" else ExportLogsServiceRequest
    problems: list[str] = []
    for n, body in enumerate(bodies):
        outs = []
        for name, redactor, fn in impls:
            msg = cls.FromString(body)
            counts = fn(redactor, signal, msg)
            outs.append((name, msg.SerializeToString(), counts))
        ref_name, ref_bytes, ref_counts = outs[0]
        for name, out, counts in outs[1:]:
            if out != ref_bytes or counts != ref_counts:
                problems.append(f"{signal} request {n}: {name} differs from {ref_name} "
                                f"(counts {counts} vs {ref_counts})")
                problems += _first_differences(cls, ref_bytes, out)
    return problems


def _first_differences(cls: Any, a: bytes, b: bytes, limit: int = 3) -> list[str]:
    out: list[str] = []
    ma, mb = cls.FromString(a), cls.FromString(b)
    items = ("resource_spans", "scope_spans", "spans") if cls is ExportTraceServiceRequest else (
        "resource_logs", "scope_logs", "log_records")
    xs = getattr(getattr(ma, items[0])[0], items[1])[0]
    ys = getattr(getattr(mb, items[0])[0], items[1])[0]
    for x, y in zip(getattr(xs, items[2]), getattr(ys, items[2])):
        if x != y:
            out.append(f"    expected {str(x)[:600]!r}\n    got      {str(y)[:600]!r}")
            if len(out) >= limit:
                break
    return out


def huge_prompt(redactor: Redactor) -> tuple[float, str]:
    """A 31 MB prompt (a pasted document, an address near the top): redaction time and the result."""
    prose = "The quarterly report shows revenue growth in every region except the northeast. "
    prompt = "Summarize this for jane.doe@example.com, call +1 (415) 555-0132 with questions.\n" + prose * 380_000
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="chat")
    span.attributes.append(KeyValue(key="gen_ai.input.messages", value=AnyValue(
        string_value=json.dumps([{"role": "user", "content": prompt}]))))
    t = time.perf_counter()
    counts = redact_request(redactor, "traces", req)
    elapsed = time.perf_counter() - t
    value = span.attributes[0].value.string_value
    return elapsed, f"{len(value.encode()) / 1e6:.2f} MB, ends {value[-32:]!r}, counts {counts}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pii", type=int, default=3000, help="spans of the differential load with PII")
    ap.add_argument("--skip-legacy-timing", action="store_true", help="legacy takes ~0.1 ms a span")
    args = ap.parse_args()

    impls = implementations()
    bodies = [b for b, _ in build_requests(args.spans, 256, args.seed)]
    print(f"load: {args.spans} spans in {len(bodies)} requests, "
          f"{sum(map(len, bodies)) / args.spans:.0f} bytes a span; median of {args.runs} runs, one thread")
    results = {}
    for impl in impls:
        if impl[0] == "legacy" and args.skip_legacy_timing:
            continue
        wall, cpu, counts = time_runs(impl, bodies, args.runs)
        results[impl[0]] = wall
        print(f"  {impl[0]:10s} {wall:8.2f} µs/span wall  {cpu:8.2f} µs/span cpu   findings {counts}")
    if "legacy" in results and "new" in results:
        print(f"  speed-up new vs legacy (wall): {results['legacy'] / results['new']:.1f}x")

    traces, logs = build_pii_requests(args.pii, args.seed + 1)
    print(f"PII load ({args.pii} spans, a third with PII injected), one run:")
    for impl in impls[:2]:
        wall, cpu, counts = time_runs(impl, traces, 1)
        print(f"  {impl[0]:10s} {wall:8.2f} µs/span wall  {cpu:8.2f} µs/span cpu   findings {counts}")
    problems = differential(impls, "traces", bodies[: max(1, 2000 // 256)])
    problems += differential(impls, "traces", traces)
    problems += differential(impls, "logs", logs)
    print("differential legacy / new / new-no-hs:", "identical" if not problems else f"{len(problems)} problems")
    for line in problems[:20]:
        print(line)

    elapsed, what = huge_prompt(impls[1][1])
    print(f"30 MB prompt: {elapsed * 1000:.0f} ms; result {what}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
