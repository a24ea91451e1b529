"""Redaction: a labelled corpus scored for precision and recall, JSON safety, the OTLP processor, speed.

Every text of :data:`CASES` (tests/fixtures/pii_labelled.jsonl) carries the exact
spans a careful human would redact, as ``(kind, substring)`` in order of
appearance (a substring that occurs twice is listed twice). Scoring is exact
(bench/redaction_quality.py): a finding counts only when kind, start and end
all agree. ``pytest -s`` prints the table and every miss.

The Hyperscan prefilter must not change a single finding: its supersets are
checked detector by detector on mutated texts, and whole requests are redacted
with it, without it (the fallback of other platforms) and by the implementation
before it (kept in bench/redaction.py), with byte-identical results.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from monitor.config import RedactionSettings
from monitor.errors import ConfigError
from monitor.redaction import (
    TRUNCATED,
    TRUNCATION_MARKER,
    Finding,
    Redactor,
    _prefilter,
    _screen,
    luhn_ok,
    make_processor,
    redact_request,
)
from monitor.redaction.detectors import CASE_TWINS, KINDS
from monitor.sidecar.proxy import capture

ROOT = Path(__file__).resolve().parents[1]

E, P, C, I, K, B = "EMAIL", "PHONE", "CARD", "IP", "API_KEY", "BEARER_TOKEN"

# Fake but format-valid credentials (AWS and Stripe values are their documentation examples).
OPENAI = "sk-proj-Xq3vB8nLp2RtY7wKz9MfH4sJc6DgA1eUo5iTb0NrQxWyZ"
OPENAI_LEGACY = "sk-4fGh7JkL9mNpQ2rStUvWxYz1A3bC5dE7fG9hJ2kL4mN6pQ8r"
ANTHROPIC = "sk-ant-api03-AbCdEfGh1234IjKlMnOp5678QrStUvWx9012YzAbCdEf3456-GhIjKl_7890MnOpQrSt"
AWS = "AKIAIOSFODNN7EXAMPLE"
AWS_STS = "ASIAY34FZKBOKMUTVV7A"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GITHUB_APP = "ghs_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0PpOoNnMm"
GITHUB_PAT = "github_pat_11ABCDEFG0123456789abc_" + "Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBaZy9Xw8Vu7Ts6Rq5Po4Nm3Lk2"
SLACK = "xoxb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_USER = "xoxp-1234567890-1234567890-1234567890-abcdef1234567890abcdef1234567890"
GOOGLE = "AIza" + "SyD-1a2b3c4d5e6f7g8h9i0jKLMNOPQRSTU"
STRIPE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
STRIPE_RESTRICTED = "rk_live_51H8xYzAbCdEfGh0123456789"
HF = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz12345678"
NPM = "npm_AbCdEf0123456789AbCdEf0123456789AbCd"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0"
       "IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1x2Kq8Zt9vXo3pQ7rLm5N4bC6dE8fG0hJ2kL\n"
       "q8Zt9vXo3pQ7rLm5N4bC6dE8fG0hJ2kL1x2Kq8Zt9vXo3pQ7==\n-----END RSA PRIVATE KEY-----")

def _quality():
    spec = importlib.util.spec_from_file_location("redaction_quality", ROOT / "bench" / "redaction_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("redaction_quality", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


quality = _quality()
Case = tuple[str, list[tuple[str, str]]]
CASES: list[Case] = quality.load()
"""The labelled set (tests/fixtures/pii_labelled.jsonl, described in bench/redaction_quality.py)."""


def _apply(text: str, spans: list[tuple[str, int, int]]) -> str:
    parts, pos = [], 0
    for kind, start, end in sorted(spans, key=lambda s: s[1]):
        parts += [text[pos:start], f"[{kind}]"]
        pos = end
    return "".join(parts) + text[pos:]


def test_labelled_corpus_precision_and_recall():
    """Exact scoring per kind; the figures are README's (``bench/redaction_quality.py`` prints them)."""
    assert len(CASES) >= 300
    per, misses = quality.score(quality.findings(Redactor().scan, CASES), CASES)
    total = sum(per.values(), Counter())
    print("\n" + "\n".join(quality.table(per) + misses))
    assert set(per) == set(KINDS.values())  # every kind is labelled
    assert quality.precision(total) >= 0.98 and quality.recall(total) >= 0.97, "\n".join(misses)
    for kind, c in per.items():
        assert quality.precision(c) >= 0.94, (kind, "\n".join(misses))
        assert quality.recall(c) >= 0.9, (kind, "\n".join(misses))
    for kind in ("CARD", "IBAN", "NATIONAL_ID"):  # check digits: exact
        assert per[kind]["fp"] == 0 and per[kind]["fn"] == 0, "\n".join(misses)


@pytest.mark.parametrize("valid, invalid, check", [
    (["DE89370400440532013000", "GB82WEST12345698765432", "NO9386011117947", "FR1420041010050500013M02606"],
     ["DE89370400440532013001", "GB82WEST1234569876543", "XX89370400440532013000"], "iban_ok"),
    (["85970112430", "22728695033", "76263194063"],
     ["12345678901", "85970112431", "45269387774", "05970112430"], "steuer_id_ok"),  # 777: three in a row
    (["436014944", "111222333"], ["123456789", "000000000", "436014945"], "bsn_ok"),
    (["281019549851048", "275113306341295"], ["281019549851049", "281139549851046", "381019549851048"], "nir_ok"),
    (["536221234", "001010001"], ["000121234", "666121234", "912345678", "123004567", "123450000", "078051120"],
     "ssn_ok"),
])
def test_check_digits(valid, invalid, check):
    """The checks against numbers python-stdnum calls valid, and ones that break a single rule."""
    from monitor.redaction import _identifiers
    fn = getattr(_identifiers, check)
    assert all(fn(v) for v in valid) and not any(fn(v) for v in invalid)


def test_redact_output_matches_scan_and_is_idempotent():
    r = Redactor()
    for text, _ in CASES:
        found = r.scan(text)
        out = r.redact(text)
        assert out == _apply(text, [(f.kind, f.start, f.end) for f in found])
        assert r.redact(out) == out, out
        assert r.scan(out) == []


def test_exact_outputs():
    r = Redactor()
    assert r.redact("mail jane.doe@example.com, call +1 (415) 555-0132") == "mail [EMAIL], call [PHONE]"
    assert r.redact("Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543") == "Authorization: Bearer [BEARER_TOKEN]"
    assert r.redact(f'api_key="{OPENAI}"') == 'api_key="[API_KEY]"'
    assert r.redact("card 4111-1111-1111-1111 / 4111-1111-1111-1112") == "card [CARD] / 4111-1111-1111-1112"
    assert r.redact("from 10.0.0.1 and fe80::1ff:fe23:4567:890a, Python 3.11.7") == "from [IP] and [IP], Python 3.11.7"
    text, counts = r.redact_with_counts(f"a@b.io c@d.io {AWS} 8.8.8.8")
    assert text == "[EMAIL] [EMAIL] [API_KEY] [IP]"
    assert counts == {"EMAIL": 2, "API_KEY": 1, "IP": 1}
    assert r.scan("x a@b.io") == [Finding("EMAIL", 2, 8)]


def test_priority_secrets_before_pii():
    r = Redactor()
    # the GitHub token would also look like an e-mail local part; the key wins, whole
    assert r.redact(f"https://{GITHUB}@github.com/a/b") == "https://[API_KEY]@github.com/a/b"
    # a JWT after Bearer is the bearer token, not an API key
    assert r.redact(f"Bearer {JWT}") == "Bearer [BEARER_TOKEN]"
    # a Luhn-valid card is never split into phone numbers
    assert r.redact("Tel: 4111 1111 1111 1111") == "Tel: [CARD]"


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and luhn_ok("5500000000000004")
    assert not luhn_ok("4111111111111112") and not luhn_ok("1234567890123456")


# ---------------------------------------------------------------------- JSON content


def test_json_stays_valid_and_only_string_values_change():
    r = Redactor()
    messages = [
        {"role": "system", "parts": [{"type": "text", "content": "You are helpful. Admin: root@corp.example"}]},
        {"role": "user",
         "parts": [{"type": "text", "content": "Ich heiße Zoë, Tel. +49 30 12345678 — \"danke\"\n"}],
         "meta": {"n": 3, "score": 0.5, "ok": True, "none": None, "ip_count": 19216801}},
        {"role": "assistant", "parts": [{"type": "tool_call", "name": "lookup",
                                          "arguments": json.dumps({"email": "zoe@example.de", "limit": 5})}]},
    ]
    raw = json.dumps(messages, indent=2)
    out, counts = r.redact_content(raw)
    parsed = json.loads(out)  # still valid JSON
    assert counts == {"EMAIL": 2, "PHONE": 1}
    assert parsed[0]["parts"][0]["content"] == "You are helpful. Admin: [EMAIL]"
    assert parsed[1]["parts"][0]["content"] == "Ich heiße Zoë, Tel. [PHONE] — \"danke\"\n"
    assert parsed[1]["meta"] == messages[1]["meta"]  # numbers, booleans, null untouched
    assert json.loads(parsed[2]["parts"][0]["arguments"]) == {"email": "[EMAIL]", "limit": 5}  # nested JSON string
    assert "Zoë" in out  # ensure_ascii=False
    # keys are not redacted, structure is identical apart from string values
    assert _shape(parsed) == _shape(messages)
    # nothing to redact: the original text comes back byte for byte (formatting kept)
    clean = json.dumps([{"role": "user", "content": "hello"}], indent=2)
    assert r.redact_content(clean)[0] is clean
    # not JSON after all: redacted as plain text
    assert r.redact_content("[not json a@b.io")[0] == "[not json [EMAIL]"


def test_deep_json_falls_back_to_text():
    r = Redactor()
    deep = "[" * 5000 + '"a@b.io"' + "]" * 5000  # too deep for json: plain text redaction
    out, counts = r.redact_content(deep)
    assert counts == {"EMAIL": 1} and "[EMAIL]" in out
    nested = '{"a":' * 900 + '"a@b.io"' + "}" * 900  # parses, too deep to walk
    out, counts = r.redact_content(nested)
    assert counts == {"EMAIL": 1} and "[EMAIL]" in out


def _shape(node):
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return type(node).__name__


# ---------------------------------------------------------------------- OTLP processor


def _kv(key: str, value) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=_any(value))


def _any(value) -> common_pb2.AnyValue:
    if isinstance(value, str):
        return common_pb2.AnyValue(string_value=value)
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_any(v) for v in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=[_kv(k, v) for k, v in value.items()]))
    raise TypeError(value)


def _attrs(kvs) -> dict:
    def py(v):
        kind = v.WhichOneof("value")
        if kind == "array_value":
            return [py(x) for x in v.array_value.values]
        if kind == "kvlist_value":
            return {kv.key: py(kv.value) for kv in v.kvlist_value.values}
        return getattr(v, kind)
    return {kv.key: py(kv.value) for kv in kvs}


def _trace_request() -> trace_service_pb2.ExportTraceServiceRequest:
    text = "I'm bob@example.com, key " + STRIPE
    inputs = json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}])
    span = trace_pb2.Span(
        trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="chat llama",
        attributes=[
            _kv("gen_ai.operation.name", "chat"),
            _kv("gen_ai.request.model", "meta-llama/Llama-3.1-8B-Instruct"),
            _kv("server.address", "10.0.0.7"),
            _kv("server.port", 8000),
            _kv("user.email_hint", "ops@example.com"),
            _kv("gen_ai.input.messages", inputs),
            _kv("gen_ai.system_instructions", "Escalate to +1 (415) 555-0132."),
            _kv("gen_ai.prompt.0.content", "card 4111 1111 1111 1111"),
            _kv("llm.output_messages.0.message.content", ["ip 192.168.0.9", "fine"]),
            _kv("gen_ai.tool.call.arguments", '{"to": "alice@example.org"}'),
        ],
        events=[
            trace_pb2.Span.Event(name="gen_ai.choice", attributes=[
                _kv("index", 0),
                _kv("message", {"role": "assistant", "content": "Reach me at carol@example.net"}),
                _kv("finish_reason", "stop"),
            ]),
            trace_pb2.Span.Event(name="gen_ai.user.message", attributes=[_kv("content", "my IP is 203.0.113.9")]),
            trace_pb2.Span.Event(name="exception", attributes=[_kv("exception.message", "connect 10.9.9.9 failed")]),
        ],
    )
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[_kv("host.ip", "10.0.0.5"), _kv("service.name", "vllm")]),
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])


def test_processor_redacts_every_string_but_safe_keys():
    msg = _trace_request()
    before = msg.SerializeToString()
    counts = redact_request(Redactor(), "traces", msg)
    assert msg.SerializeToString() != before
    span = msg.resource_spans[0].scope_spans[0].spans[0]
    attrs = _attrs(span.attributes)
    # untouched: safe keys (infrastructure, names, ids), numbers, resource attributes
    assert attrs["server.address"] == "10.0.0.7"
    assert attrs["gen_ai.request.model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert attrs["server.port"] == 8000
    assert _attrs(msg.resource_spans[0].resource.attributes)["host.ip"] == "10.0.0.5"
    # redacted: content, and every other string a client sent
    assert attrs["user.email_hint"] == "[EMAIL]"
    assert _attrs(span.events[2].attributes)["exception.message"] == "connect [IP] failed"
    inputs = json.loads(attrs["gen_ai.input.messages"])
    assert inputs[0]["parts"][0]["content"] == "I'm [EMAIL], key [API_KEY]"
    assert attrs["gen_ai.system_instructions"] == "Escalate to [PHONE]."
    assert attrs["gen_ai.prompt.0.content"] == "card [CARD]"
    assert attrs["llm.output_messages.0.message.content"] == ["ip [IP]", "fine"]
    assert json.loads(attrs["gen_ai.tool.call.arguments"]) == {"to": "[EMAIL]"}
    choice = _attrs(span.events[0].attributes)
    assert choice == {"index": 0, "message": {"role": "assistant", "content": "Reach me at [EMAIL]"},
                      "finish_reason": "stop"}
    assert _attrs(span.events[1].attributes) == {"content": "my IP is [IP]"}
    assert counts == {"EMAIL": 4, "API_KEY": 1, "PHONE": 1, "CARD": 1, "IP": 3}
    # idempotent: a second pass finds nothing
    assert redact_request(Redactor(), "traces", msg) == {}


def test_span_name_status_message_links_and_any_attribute():
    """What the issue's hostile run found stored raw: a note attribute, the status message (the proxy
    copies the upstream's error body), span events, tool-call arguments; and links, the span name."""
    error_body = json.dumps({"error": {"message": "account DE89 3704 0044 0532 0130 00 of jane@example.com "
                                                 "is locked", "code": 403}})
    span = trace_pb2.Span(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="lookup 536-22-1234",
        attributes=[_kv("user.note", "SSN 536-22-1234, DOB 12/03/1985, lives at 221B Baker Street"),
                    _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.response.id", "chatcmpl-536-22-1234"),
                    _kv("client.address", "203.0.113.9"),
                    _kv("gen_ai.tool.call.arguments", json.dumps({"iban": "GB82WEST12345698765432"}))],
        events=[trace_pb2.Span.Event(name="exception", attributes=[
            _kv("exception.type", "ValueError"), _kv("exception.message", "bad passport number: X1234567")])],
        links=[trace_pb2.Span.Link(trace_id=b"\x03" * 16, span_id=b"\x04" * 8,
                                   attributes=[_kv("note", "NINO AB 12 34 56 C")])],
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message=error_body))
    msg = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])
    counts = redact_request(Redactor(), "traces", msg)
    out = msg.resource_spans[0].scope_spans[0].spans[0]
    assert out.name == "lookup [SSN]"
    attrs = _attrs(out.attributes)
    assert attrs["user.note"] == "SSN [SSN], DOB [DATE_OF_BIRTH], lives at [ADDRESS]"
    assert attrs["gen_ai.response.id"] == "chatcmpl-536-22-1234"  # a safe key: never scanned
    assert attrs["client.address"] == "[IP]"
    assert json.loads(attrs["gen_ai.tool.call.arguments"]) == {"iban": "[IBAN]"}
    assert _attrs(out.events[0].attributes) == {"exception.type": "ValueError",
                                                 "exception.message": "bad passport number: [PASSPORT]"}
    assert _attrs(out.links[0].attributes) == {"note": "NINO [NATIONAL_ID]"}
    assert json.loads(out.status.message) == {"error": {"message": "account [IBAN] of [EMAIL] is locked", "code": 403}}
    assert counts == {"SSN": 2, "DATE_OF_BIRTH": 1, "ADDRESS": 1, "IP": 1, "IBAN": 2, "PASSPORT": 1,
                      "NATIONAL_ID": 1, "EMAIL": 1}
    assert redact_request(Redactor(), "traces", msg) == {}


def test_processor_logs_and_metrics():
    body = _any({"content": "write to dana@example.com", "role": "user"})
    msg = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(scope_logs=[
        logs_pb2.ScopeLogs(log_records=[
            logs_pb2.LogRecord(body=_any("login from 198.51.100.23 with Bearer abcdef1234567890"),
                               attributes=[_kv("peer", "10.1.1.1"), _kv("attempt", 3)]),
            logs_pb2.LogRecord(event_name="gen_ai.user.message", body=body),
        ])])])
    seen: list[dict] = []
    make_processor(Redactor(), seen.append)("logs", msg)
    records = msg.resource_logs[0].scope_logs[0].log_records
    assert records[0].body.string_value == "login from [IP] with Bearer [BEARER_TOKEN]"
    assert _attrs(records[0].attributes) == {"peer": "[IP]", "attempt": 3}
    assert records[1].body.kvlist_value.values[0].value.string_value == "write to [EMAIL]"
    assert seen == [{"IP": 2, "BEARER_TOKEN": 1, "EMAIL": 1}]

    metrics = metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[metrics_pb2.Metric(
            name="m", gauge=metrics_pb2.Gauge(data_points=[metrics_pb2.NumberDataPoint(
                as_int=1, attributes=[_kv("client", "10.0.0.1")])]))])])])
    before = metrics.SerializeToString()
    assert redact_request(Redactor(), "metrics", metrics) == {}
    assert metrics.SerializeToString() == before


def test_processor_leaves_safe_keys_and_url_hosts_alone():
    span = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="GET /health",
                          attributes=[_kv("server.address", "10.0.0.1"), _kv("http.url", "http://a@b.io/"),
                                      _kv("url.full", "http://10.0.0.1:8000/v1/models")])
    msg = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])
    before = msg.SerializeToString()
    assert redact_request(Redactor(), "traces", msg) == {}
    assert msg.SerializeToString() == before


# ---------------------------------------------------------------------- settings


def test_custom_rules():
    r = Redactor(RedactionSettings(custom={
        "EMPLOYEE_ID": r"\bEMP-\d{6}\b",
        "TICKET": r"ticket=(?P<value>[A-Z]{3}-\d+)",
    }))
    out = r.redact("EMP-123456 opened ticket=OPS-42 from a@b.io")
    assert out == "[EMPLOYEE_ID] opened ticket=[TICKET] from [EMAIL]"
    assert set(r.kinds) >= {"EMPLOYEE_ID", "TICKET", "EMAIL"}
    # a custom placeholder is never matched again, even by a broad rule
    broad = Redactor(RedactionSettings(custom={"BRACKETED": r"\[[A-Z_]+\]"}))
    assert broad.redact("[EMAIL] and [FOO]") == "[EMAIL] and [BRACKETED]"
    assert broad.redact(broad.redact("[FOO]")) == "[BRACKETED]"


def test_detector_selection():
    r = Redactor(RedactionSettings(detectors=["email"]))
    assert r.redact("a@b.io 10.0.0.1 +1 (415) 555-0132") == "[EMAIL] 10.0.0.1 +1 (415) 555-0132"
    assert r.kinds == ("EMAIL",)


def test_disabled_is_a_no_op():
    r = Redactor(RedactionSettings(enabled=False))
    text = f"a@b.io 4111 1111 1111 1111 {AWS}"
    assert r.redact(text) is text
    assert r.scan(text) == []
    msg = _trace_request()
    before = msg.SerializeToString()
    assert redact_request(r, "traces", msg) == {}
    assert msg.SerializeToString() == before


@pytest.mark.parametrize("settings, message", [
    (RedactionSettings(detectors=["email", "zip_code"]), "unknown detector"),
    (RedactionSettings(custom={"BAD": "(unclosed"}), "invalid regular expression"),
    (RedactionSettings(custom={"EMPTY": "x*"}), "empty string"),
    (RedactionSettings(custom={"bad name": "x"}), "rule name"),
])
def test_invalid_settings_raise_config_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        Redactor(settings)


# ---------------------------------------------------------------------- speed


def test_one_megabyte_in_well_under_a_second():
    r = Redactor()
    filler = ("The quarterly report shows revenue of $1,299.00 per seat, version 3.11.7 was deployed on "
              "2024-05-01 at 12:30:45; order #123456789 shipped. ")
    chunks: list[str] = []
    size = 0
    i = 0
    while size < 1_000_000:
        piece = CASES[i % len(CASES)][0] + "\n" + filler * 3 + "\n"
        chunks.append(piece)
        size += len(piece)
        i += 1
    text = "".join(chunks)[:1_000_000]
    r.redact(text[:10_000])  # warm up
    best = float("inf")
    for _ in range(3):  # CPU time of this thread: what redaction costs, not what other processes take of the cores
        t0 = time.thread_time()
        out, counts = r.redact_with_counts(text)
        best = min(best, time.thread_time() - t0)
    print(f"\nredacted {len(text) / 1e6:.2f} MB in {best * 1000:.0f} ms CPU (best of 3); findings {dict(counts)}")
    assert sum(counts.values()) > 100 and "[CARD]" in out
    assert best < 1.0


# ---------------------------------------------------------------------- more content: events, URLs, logs


def _span_request(attributes=(), events=()) -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="op",
                          attributes=list(attributes), events=list(events))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])


# (attribute, value, value after redaction); None: unchanged. Path and query are redacted decoded; of the
# authority only credentials.
URL_CASES: list[tuple[str, str, str | None]] = [
    ("url.full", "https://api.example.com/v1/users?email=jane%40example.com&page=2#top",
     "https://api.example.com/v1/users?email=[EMAIL]&page=2#top"),
    ("url.full", "https://shop.example/checkout?card=4111+1111+1111+1111&ok=1",
     "https://shop.example/checkout?card=[CARD]&ok=1"),
    ("url.full", "https://example.com/login?user=bob&password=hunter22x",
     "https://example.com/login?user=bob&password=[API_KEY]"),
    ("url.full", "https://example.com/cb?access_token=FwoGZXIvYXdzEBYaDHqa0AP1Example&state=xyz",
     "https://example.com/cb?access_token=[API_KEY]&state=xyz"),
    ("url.full", "https://example.com/call?phone=%2B1%20(415)%20555-0132", "https://example.com/call?phone=[PHONE]"),
    ("url.full", "https://example.com/a?next=%2Fhome&ip=198.51.100.7#frag",
     "https://example.com/a?next=%2Fhome&ip=[IP]#frag"),
    ("url.full", "https://example.com/search?q=weather+in+berlin&lang=en", None),
    ("url.full", "https://example.com/users/10.0.0.1/jane%40example.com", "https://example.com/users/[IP]/[EMAIL]"),
    ("url.full", "https://bob:hunter22x@10.0.0.1:9200/_search?q=x", "https://bob:[API_KEY]@10.0.0.1:9200/_search?q=x"),
    ("url.path", "/v1/users/jane@example.com/orders", "/v1/users/[EMAIL]/orders"),
    ("http.target", "/lookup/536-22-1234?iban=DE89370400440532013000", "/lookup/[SSN]?iban=[IBAN]"),
    ("url.full", "https://example.com/?email=[EMAIL]&n=1", None),  # already redacted
    ("url.query", "email=a.b%40c.io&debug=true", "email=[EMAIL]&debug=true"),
    ("url.query", f"api_key={OPENAI}", "api_key=[API_KEY]"),
    ("url.query", "jane%40example.com", "[EMAIL]"),
    ("url.query", "q=order+123456789&page=3", None),
    ("http.url", "http://a@b.io/?email=x%40y.io", "http://a@b.io/?email=[EMAIL]"),  # the host stays
]

# (event name, attributes, attributes after redaction): every attribute of any event but safe keys
EVENT_CASES: list[tuple[str, dict, dict]] = [
    ("gen_ai.evaluation.result",
     {"gen_ai.output.messages": '[{"content":"mail a@b.io"}]', "note": "call 555-123-4567"},
     {"gen_ai.output.messages": '[{"content":"mail [EMAIL]"}]', "note": "call [PHONE]"}),
    ("exception", {"exception.message": "connect 10.9.9.9 failed", "gen_ai.prompt": "my IP is 203.0.113.9"},
     {"exception.message": "connect [IP] failed", "gen_ai.prompt": "my IP is [IP]"}),
    ("tool.result", {"gen_ai.tool.call.result": '{"email": "carol@example.net", "n": 3}'},
     {"gen_ai.tool.call.result": '{"email":"[EMAIL]","n":3}'}),
    ("feedback", {"input.value": "reach me at +44 7700 900 123",
                  "llm.output_messages.0.content": "4111 1111 1111 1111"},
     {"input.value": "reach me at [PHONE]", "llm.output_messages.0.content": "[CARD]"}),
    ("gen_ai.assistant.message", {"content": "served from 192.0.2.1", "id": "msg-1"},
     {"content": "served from [IP]", "id": "msg-1"}),
    ("audit", {"message": "user bob@example.com logged in", "exception.type": "a@b.io"},
     {"message": "user [EMAIL] logged in", "exception.type": "a@b.io"}),
]


@pytest.mark.parametrize("key, value, expected", URL_CASES)
def test_url_query_strings(key, value, expected):
    msg = _span_request([_kv(key, value)])
    counts = redact_request(Redactor(), "traces", msg)
    out = _attrs(msg.resource_spans[0].scope_spans[0].spans[0].attributes)[key]
    assert out == (value if expected is None else expected)
    assert (counts == {}) == (expected is None)
    assert redact_request(Redactor(), "traces", msg) == {}  # idempotent


@pytest.mark.parametrize("name, attributes, expected", EVENT_CASES)
def test_events_of_any_name(name, attributes, expected):
    event = trace_pb2.Span.Event(name=name, attributes=[_kv(k, v) for k, v in attributes.items()])
    msg = _span_request(events=[event])
    redact_request(Redactor(), "traces", msg)
    assert _attrs(msg.resource_spans[0].scope_spans[0].spans[0].events[0].attributes) == expected


def test_log_bodies_with_escapes_and_kvlists():
    text = "Kontakt: jürgen.weiß@beispiel.de\nTel. +49 30 12345678"
    msg = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(scope_logs=[
        logs_pb2.ScopeLogs(log_records=[
            logs_pb2.LogRecord(body=_any(json.dumps({"content": text}))),  # \\u00fc, \\n escapes
            logs_pb2.LogRecord(body=_any({"content": "key AKIAIOSFODNN7EXAMPLE", "n": [text]})),
            logs_pb2.LogRecord(body=_any("all clear"), attributes=[_kv("client", "203.0.113.7")]),
        ])])])
    counts = redact_request(Redactor(), "logs", msg)
    records = msg.resource_logs[0].scope_logs[0].log_records
    assert json.loads(records[0].body.string_value) == {"content": "Kontakt: [EMAIL]\nTel. [PHONE]"}
    assert _attrs([common_pb2.KeyValue(key="b", value=records[1].body)])["b"] == {
        "content": "key [API_KEY]", "n": ["Kontakt: [EMAIL]\nTel. [PHONE]"]}
    assert records[2].body.string_value == "all clear"
    assert _attrs(records[2].attributes) == {"client": "[IP]"}
    assert counts == {"EMAIL": 2, "PHONE": 2, "API_KEY": 1, "IP": 1}


# ---------------------------------------------------------------------- bounded cost


def test_huge_prompt_is_cut_before_scanning():
    prose = "The quarterly report shows revenue growth in every region except the northeast. "
    prompt = "Write to jane.doe@example.com. " + prose * 380_000  # 31 MB
    value = json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}])
    msg = _span_request([_kv("gen_ai.operation.name", "chat"), _kv("gen_ai.input.messages", value)])
    seen: list[dict] = []
    t0 = time.thread_time()  # CPU time: the cut is what keeps it cheap, whatever else runs on the machine
    make_processor(Redactor(), seen.append)("traces", msg)
    elapsed = time.thread_time() - t0
    out = _attrs(msg.resource_spans[0].scope_spans[0].spans[0].attributes)["gen_ai.input.messages"]
    print(f"\n{len(value) / 1e6:.0f} MB prompt redacted in {elapsed * 1000:.0f} ms CPU")
    assert elapsed < 0.5
    assert seen == [{TRUNCATED: 1, "EMAIL": 1}]
    kept, marker = out[:out.rindex("…")], out[out.rindex("…"):]
    original_kept = kept.replace("[EMAIL]", "jane.doe@example.com")
    assert marker == TRUNCATION_MARKER.format(n=len(value.encode()) - len(original_kept.encode()))
    assert value.startswith(original_kept) and "[EMAIL]" in kept
    assert len(out.encode()) <= RedactionSettings().max_value_bytes
    assert redact_request(Redactor(), "traces", msg) == {}  # fits now: not cut again, marker not redacted


def test_truncation_marker_is_the_capture_proxys():
    assert TRUNCATION_MARKER == capture.TRUNCATION_MARKER
    r = Redactor(RedactionSettings(max_value_bytes=1024))
    value = common_pb2.AnyValue(string_value="é" * 600 + "a@b.io")  # 1206 bytes: cut inside no character
    counts: dict[str, int] = {}
    r.redact_any_value(value, counts)
    assert counts == {TRUNCATED: 1}
    assert value.string_value == "é" * 492 + "…[truncated 222 bytes]" and len(value.string_value.encode()) <= 1024
    with pytest.raises(ValueError):
        RedactionSettings(max_value_bytes=100)


# ---------------------------------------------------------------------- the prefilter changes no finding

needs_hyperscan = pytest.mark.skipif(_prefilter.hyperscan is None, reason="hyperscan is not installed here")

_NOISE = ["é", "ü", "—", "\u00a0", "😀", "\u212a", "\u0130", "ı", "ſ", "\n", "\t", " ", "x", "9", "-", "(", ")", ".",
          ",", ":", "=", '"', "'", "[", "+", "/", "@", "_"]
_EDGE = [
    "phone" + "é" * 30 + " 555 123 4567", "Telefon— 555 123 4567", "call\nme\nat 555-123-4567",
    "LLÁMAME AL 600 123 456", "Tel:" + " " * 23 + "5551234567", "TÉLÉPHONE : 06 12 34 56 78", "móvil 612 34 56 78",
    "au numéro 06 12 34 56 78", "rufen sie mich an: 030 1234567", "appelez-moi au 06 12 34 56 78",
    "cell-phone: 415 555 0132", "fax (030) 1234567", "contraseña: hunter22", "CONTRASEÑA = s3cr3tvalue",
    "mot de passe est hunter22", "PASSWORD \u0130S hunter2x", "api_\u212aey: 'abc123'", "secret_access_key => 'x1y2z3'",
    "passphrase:=correct-horse", "Bearer abc\u212adef1234567", "https://" + "ü" * 60 + ":p4ssw0rd@host.example.com",
    "curl -u ädmin:Pa55word! http://x", "ÉLODIE@EXEMPLE.FR", "x@测试.中国", "::ffff:192.0.2.128", "2001:db8::",
    "2001:DB8::8A2E:370:7334", "1 (415) 555-0132", "030 / 123 456 78", "+49 (0)30 1234 5678", "(030) 1234567",
    "91 123 45 67", "3782 822463 10005", "6011000990139424", "8.8.8.8:53",
]


def _texts(n: int, seed: int = 7) -> list[str]:
    """The labelled corpus and edge cases, then ``n`` mutations of them (case, twins, non-ASCII, noise)."""
    rng = random.Random(seed)
    base = [t for t, _ in CASES] + _EDGE
    out = list(base)
    for _ in range(n):
        chars = list(" ".join(rng.choice(base) for _ in range(rng.randint(1, 2))))
        for _ in range(rng.randint(0, 4)):
            i = rng.randrange(len(chars))
            op = rng.randrange(4)
            if op == 0:
                chars[i] = chars[i].upper()
            elif op == 1:
                chars.insert(i, rng.choice(_NOISE))
            elif op == 2:
                chars[i] = {"k": "\u212a", "K": "\u212a", "i": "\u0130", "I": "\u0130"}.get(chars[i], chars[i])
            else:
                del chars[i]
        out.append("".join(chars).upper() if rng.random() < 0.2 else "".join(chars))
    return out


def _reports(det, text: str) -> bool:
    """Whether ``det`` alone (no other detector claiming anything) reports a finding in ``text``."""
    lower = text.lower() if len(text.lower()) == len(text) else text.replace("\u0130", "i").lower()
    for m in det.candidates(text, lower):
        start, end = det.span(m)
        if start < end and (det.validate is None or det.validate(m, text)):
            return True
    return False


@needs_hyperscan
def test_each_superset_matches_wherever_its_detector_reports():
    r = Redactor()
    for text in _texts(3000):
        ids = r._prefilter.select(text.encode("utf-8", "surrogatepass"))
        if r._twin_id in ids:
            ids |= r._keyword_ids
        for i, (det, _, _) in enumerate(r._plan):
            assert i in ids or not _reports(det, text), (det.kind, det.pattern.pattern[:50], text)
        if r.scan(text):  # and in JSON of every kind that carries the text
            for enc in (json.dumps([{"c": text}]), json.dumps({"c": text}, ensure_ascii=False, indent=2),
                        json.dumps([{"arguments": json.dumps({"body": text})}]),
                        json.dumps({"c": text}).replace("@", "\\u0040").replace("/", "\\/")):
                assert r._prefilter.any(*_prefilter.views(enc.encode("utf-8", "surrogatepass"))), enc


@needs_hyperscan
def test_clean_prose_matches_no_superset():
    r = Redactor()
    prose = ("The quarterly report shows revenue growth in every region except the northeast. Please summarize "
             "the attached meeting notes in three short bullet points. Preheat the oven to 190 degrees. "
             "Unfortunately I will be travelling that week; I redacted one phone number and an email address.")
    assert r._prefilter.select(prose.encode()) == set()
    assert r._prefilter.any(*_prefilter.views(json.dumps([{"role": "user", "content": prose}]).encode())) is False


def test_case_twins_are_all_the_non_ascii_characters_that_lower_case_to_ascii():
    # Redactor.scan runs keyword patterns on text.replace("İ", "i").lower(); supersets rely on this.
    for cp in range(0x80, 0x110000):
        c = chr(cp)
        assert len(c.lower()) == 1 or c == "\u0130", hex(cp)
        assert c in CASE_TWINS or not any(ch.isascii() for ch in c.replace("\u0130", "i").lower()), hex(cp)


class _NoHyperscan:
    """Within: Redactors are built as on a platform without the hyperscan wheel."""

    def __enter__(self):
        self.saved, _prefilter.hyperscan = _prefilter.hyperscan, None

    def __exit__(self, *exc):
        _prefilter.hyperscan = self.saved


@pytest.mark.parametrize("settings", [
    RedactionSettings(), RedactionSettings(detectors=["phone", "api_key"]),
    RedactionSettings(custom={"EMPLOYEE_ID": r"\bEMP-\d{6}\b"}), RedactionSettings(max_value_bytes=2048),
], ids=["default", "some-detectors", "custom-rule", "small-limit"])
def test_prefilter_and_fallback_agree(settings):
    fast = Redactor(settings)
    with _NoHyperscan():
        plain = Redactor(settings)
    assert plain._prefilter is None
    for text in _texts(500, seed=3):
        assert fast.scan(text) == plain.scan(text), text
    for n, (signal, body) in enumerate(_random_requests(120, seed=5)):
        cls = (trace_service_pb2.ExportTraceServiceRequest if signal == "traces"
               else logs_service_pb2.ExportLogsServiceRequest)
        a, b = cls.FromString(body), cls.FromString(body)
        assert redact_request(fast, signal, a) == redact_request(plain, signal, b), n
        assert a.SerializeToString() == b.SerializeToString(), n


def _random_requests(n: int, seed: int) -> list[tuple[str, bytes]]:
    """Requests mixing clean and sensitive content in every place redact_request looks, encoded every way."""
    rng = random.Random(seed)
    texts = [t for t, _ in CASES] + _EDGE + ["The quarterly report shows revenue growth.", "ok", ""] * 20

    def text() -> str:
        t = rng.choice(["\n", " — ", " "]).join(rng.choice(texts) for _ in range(rng.randint(1, 3)))
        return t * 400 if rng.random() < 0.03 else t  # now and then longer than a small max_value_bytes

    def content() -> str:
        t, style = text(), rng.randrange(5)
        msgs = [{"role": "user", "parts": [{"type": "text", "content": t}]}]
        return [json.dumps(msgs), json.dumps(msgs, ensure_ascii=False, indent=2),
                json.dumps([{"arguments": json.dumps({"body": t, "more": [json.dumps({"x": t})]})}]),
                json.dumps(msgs).replace("@", "\\u0040").replace("/", "\\/").replace("K", "\\u212a"), "[" + t][style]

    out: list[tuple[str, bytes]] = []
    for _ in range(n):
        if rng.random() < 0.2:
            records = [logs_pb2.LogRecord(body=_any(content()), trace_id=rng.randbytes(16),
                                          attributes=[_kv("peer", text())]) for _ in range(rng.randint(1, 6))]
            out.append(("logs", logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
                scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]).SerializeToString()))
            continue
        spans = []
        for _ in range(rng.randint(1, 12)):
            attrs = [_kv("gen_ai.response.id", f"chatcmpl-{rng.getrandbits(96):024x}"), _kv("user.note", text())]
            if rng.random() < 0.8:
                attrs.append(_kv("gen_ai.input.messages", content()))
            if rng.random() < 0.2:
                attrs.append(_kv("gen_ai.prompt.0.content", [text(), {"c": text()}]))
            if rng.random() < 0.2:
                q = f"q={quote_plus(text()[:300])}&email={quote('jane@example.com')}&password=hunter22x"
                attrs.append(_kv(rng.choice(["url.full", "url.query"]), rng.choice([f"https://x.example/p?{q}#f", q])))
            events = [trace_pb2.Span.Event(
                name=rng.choice(["gen_ai.user.message", "exception", "gen_ai.evaluation"]),
                attributes=[_kv(rng.choice(["content", "gen_ai.output.messages"]), content())])
                for _ in range(rng.randint(0, 2))]
            spans.append(trace_pb2.Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name="chat",
                                        start_time_unix_nano=rng.getrandbits(63), attributes=attrs, events=events))
        out.append(("traces", trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            resource=resource_pb2.Resource(attributes=[_kv("host.ip", "10.0.0.5")]),
            scope_spans=[trace_pb2.ScopeSpans(spans=spans)])]).SerializeToString()))
    return out


def _bench():
    spec = importlib.util.spec_from_file_location("bench_redaction", ROOT / "bench" / "redaction.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_redaction", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_same_output_as_before_the_prefilter():
    """The realistic bench load, clean and with PII injected (plain, escaped, nested JSON; events; logs)."""
    bench = _bench()
    impls = bench.implementations()
    clean = [b for b, _ in bench.build_requests(512, 256, 11)]
    traces, logs = bench.build_pii_requests(3000, 12)
    problems = bench.differential(impls, "traces", clean + traces) + bench.differential(impls, "logs", logs)
    assert problems == []


def test_redactor_is_thread_safe():
    r = Redactor()
    bodies = [body for signal, body in _random_requests(40, seed=9) if signal == "traces"]

    def run() -> list[bytes]:
        out = []
        for body in bodies:
            msg = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            redact_request(r, "traces", msg)
            out.append(msg.SerializeToString())
        return out

    expected = run()
    results: list[list[bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(run())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_item_ranges_follow_the_wire_format():
    spans = [trace_pb2.Span(name=f"s{i}", trace_id=bytes([i]) * 16, attributes=[_kv("k", "v" * 200 * i)])
             for i in range(5)]
    msg = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(resource=resource_pb2.Resource(attributes=[_kv("a", "b")]), schema_url="x",
                                scope_spans=[trace_pb2.ScopeSpans(spans=spans[:2], schema_url="y"),
                                             trace_pb2.ScopeSpans(spans=spans[2:3])]),
        trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=spans[3:])])])
    data = msg.SerializeToString()
    ranges = _screen.item_ranges(data)
    assert [path for _, _, path in ranges] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 0, 1)]
    for start, end, (i, j, k) in ranges:
        assert data[start:end] == msg.resource_spans[i].scope_spans[j].spans[k].SerializeToString()
    with pytest.raises((ValueError, IndexError)):
        _screen.item_ranges(data[:-3])


def _screened(r: Redactor, signal: str, msg) -> list[tuple[int, int, int]] | None:
    from monitor.redaction import request
    paths, data = _screen.flagged(r, msg, signal == "logs", request._SAFE_BYTES, request._URL_BYTES)
    assert data == msg.SerializeToString()
    return paths


@needs_hyperscan
def test_the_screen_walks_only_items_with_a_match_where_redaction_looks():
    """Matches in safe-key values (a hex response id the IBAN superset matches), in trace and span
    ids, in event names or in attribute keys cost no walk; a candidate in any part redaction scans
    does, with the same result as the pure-Python fallback."""
    fast = Redactor()
    with _NoHyperscan():
        plain = Redactor()
    response_id = "chatcmpl-ab12cdef3456a7b8c9d0e1f2"  # the IBAN superset matches this hex
    assert fast._prefilter.select(response_id.encode())
    email = "jane.doe@example.com"
    id_like = b"jd@example.io\x00\x00\x00"  # a trace id whose bytes look like an e-mail address
    assert fast._prefilter.select(id_like)
    clean = [_kv("gen_ai.response.id", response_id), _kv("gen_ai.request.model", "llama-3-8b"),
             _kv("gen_ai.input.messages", json.dumps([{"role": "user", "content": "How are you today?"}]))]
    # a prompt that spells the wire bytes of a safe attribute, then an address: still scanned
    forged = "\n\x14\n\x12gen_ai.response.id\x12\x18\n\x16" + email
    spans = [
        trace_pb2.Span(trace_id=id_like, span_id=id_like[:8], parent_span_id=id_like[8:], name="chat",
                       attributes=clean, events=[trace_pb2.Span.Event(name=email, attributes=clean)],
                       links=[trace_pb2.Span.Link(trace_id=id_like, span_id=id_like[:8], attributes=clean)],
                       status=trace_pb2.Status(message="ok")),                      # 0: nothing to walk
        trace_pb2.Span(trace_id=id_like, name=f"chat for {email}", attributes=clean),  # 1: the name
        trace_pb2.Span(attributes=clean, status=trace_pb2.Status(message=f"no mailbox {email}")),  # 2: status
        trace_pb2.Span(attributes=clean, events=[trace_pb2.Span.Event(
            name="gen_ai.user.message", attributes=[_kv("content", f"write to {email}")])]),  # 3: an event
        trace_pb2.Span(attributes=clean, links=[trace_pb2.Span.Link(
            trace_id=id_like, attributes=[_kv("note", f"from {email}")])]),               # 4: a link
        trace_pb2.Span(attributes=[*clean, _kv("user.profile", {"contact": [email]})]),   # 5: nested values
        trace_pb2.Span(attributes=[*clean, _kv("gen_ai.prompt", forged)]),                # 6: forged bytes
        trace_pb2.Span(attributes=[*clean, _kv("gen_ai.output.messages", json.dumps(
            [{"content": email.replace("@", "\u0040")}]))]),                             # 7: escaped in JSON
        trace_pb2.Span(attributes=[*clean, _kv("url.full", "https://x.example/u?to=jane.doe%40example.com")]),  # 8
        trace_pb2.Span(attributes=[*clean, _kv(email, "a key is never scanned")]),        # 9: in a key only
    ]
    traces = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[_kv("host.name", email)]),  # resources are never scanned
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])
    records = [
        logs_pb2.LogRecord(trace_id=id_like, severity_text=email, event_name=email,
                           attributes=[_kv("gen_ai.response.id", response_id)], body=_any("fine")),  # 0
        logs_pb2.LogRecord(body=_any(f"bounce from {email}")),                              # 1: the body
        logs_pb2.LogRecord(body=_any("fine"), attributes=[_kv("peer", email)]),             # 2: an attribute
    ]
    logs = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs(log_records=records)])])
    assert _screened(fast, "traces", traces) == [(0, 0, k) for k in range(1, 9)]
    assert _screened(fast, "logs", logs) == [(0, 0, 1), (0, 0, 2)]
    for signal, msg, found in (("traces", traces, 8), ("logs", logs, 2)):
        a, b = type(msg).FromString(msg.SerializeToString()), type(msg).FromString(msg.SerializeToString())
        assert redact_request(fast, signal, a) == redact_request(plain, signal, b) == {"EMAIL": found}
        assert a.SerializeToString() == b.SerializeToString()
        if signal == "traces":
            after = a.resource_spans[0].scope_spans[0].spans
            assert after[0] == spans[0] and after[9] == spans[9]
            assert after[6].attributes[-1].value.string_value == forged.replace(email, "[EMAIL]")


def test_json_views_decode_as_a_json_parser_does():
    from monitor.redaction import redact
    assert redact._MAX_JSON_DEPTH <= _prefilter.MAX_JSON_LEVELS  # views reach every leaf the redactor parses

    def expected(text: str) -> bytes:
        return b"".join(c.encode() if c.isascii() or c in CASE_TWINS else _prefilter.STAND_IN for c in text)

    for text in _texts(300, seed=1) + ['a\\"b\\\\n\\u0041', "\\" * 7 + "n", "x\ud83d\ude00y\ud800z" * 40]:
        encoded = json.dumps(text)  # every non-ASCII character as \\uXXXX; few and many backslashes
        decoded = json.loads(encoded)  # a surrogate pair is one character, as in the view
        assert _prefilter.json_unescape(encoded.encode()) == b'"' + expected(decoded) + b'"', text
    nested = json.dumps({"a": '{"b": "x\\u0040y.io"}'})  # JSON in a JSON string, its "@" escaped in it
    assert json.loads(json.loads(nested)["a"]) == {"b": "x@y.io"}
    level1, level2 = _prefilter.views(nested.encode())[1:]
    assert b'"x\\u0040y.io"' in level1 and b'"x@y.io"' in level2


def test_many_matches_and_escapes_fall_back_to_walking():
    fast = Redactor()
    with _NoHyperscan():
        plain = Redactor()
    many_matches = " ".join(f"u{i}@example.com" for i in range(_prefilter.LOCATE_CAP + 10))
    many_escapes = json.dumps([{"content": "line\n" * (_prefilter.ESCAPE_CAP + 10) + "mail a@b.io"}])
    for value in (many_matches, many_escapes):
        body = _span_request([_kv("gen_ai.input.messages", value), _kv("gen_ai.prompt", "ok")]).SerializeToString()
        a = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        b = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        assert redact_request(fast, "traces", a) == redact_request(plain, "traces", b) != {}
        assert a == b


@needs_hyperscan
def test_client_hashes_are_ids_and_anything_else_in_their_keys_is_scanned():
    """``monitor.client.key_hash`` / ``address_hash`` (monitor/otlp/identity.py) hold hex HMACs: ids,
    which the screen does not walk for (every proxy span carries one, and its hex made the screen
    walk every span: ~100 µs each) and the walk leaves alone. Skipping them changes no verdict: no
    detector finds anything in 20,000 random hashes. Any other value in those keys (a raw key a
    gateway put there) is scanned and redacted as before."""
    import secrets

    from monitor.otlp.identity import ADDRESS_HASH_ATTR, KEY_HASH_ATTR

    fast = Redactor()
    assert all(fast.redact_text(h, {}) == h for h in (secrets.token_hex(16) for _ in range(20_000)))
    hashes = ["076fbd853f72ae55b20dbe7093bdb600", "4111111111111111aaaaaaaaaaaaaaaa"]
    assert fast._prefilter.any(hashes[0].encode())  # a superset matches the hex: without the rule, a walk
    raw = "sk-proj-" + "Ab3xYz9Q" * 5
    spans = [trace_pb2.Span(name="chat", attributes=[_kv(KEY_HASH_ATTR, hashes[0]), _kv(ADDRESS_HASH_ATTR, hashes[1]),
                                                     _kv("gen_ai.request.model", "m")]),
             trace_pb2.Span(name="chat", attributes=[_kv(KEY_HASH_ATTR, raw)])]
    msg = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])
    assert _screened(fast, "traces", msg) == [(0, 0, 1)]
    assert redact_request(fast, "traces", msg) == {"API_KEY": 1}
    after = msg.resource_spans[0].scope_spans[0].spans
    assert after[0] == spans[0]
    assert after[1].attributes[0].value.string_value == "[API_KEY]"


@needs_hyperscan
def test_json_escapes_cost_a_walk_only_in_the_parts_that_hold_them():
    """Proxy spans carry their messages as JSON (quotes, newlines, tabs escaped) beside safe values a
    superset matches (``server.address`` 127.0.0.1, a hex response id). A batch of them, with more
    escapes than the locate pass lists and more matches than its flat cap (the cap grows with the
    request's bytes), is not walked at all; an address that only an escape hides
    (``\\u0040`` in one span's messages) or URL encoding (another's ``url.full``) flags that span
    alone, with the same redaction as without the screen."""
    fast = Redactor()
    with _NoHyperscan():
        plain = Redactor()
    rng = random.Random(4)

    def span(i: int, content: str, escape_at: bool = False, url: str | None = None) -> trace_pb2.Span:
        messages = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": content}]}])
        attrs = [_kv("server.address", "127.0.0.1"), _kv("gen_ai.response.id", f"chatcmpl-{rng.getrandbits(96):024x}"),
                 _kv("gen_ai.output.messages", messages.replace("@", "\\u0040") if escape_at else messages)]
        if url is not None:
            attrs.append(_kv("url.full", url))
        return trace_pb2.Span(trace_id=i.to_bytes(16, "big"), span_id=i.to_bytes(8, "big"), name="chat m",
                              attributes=attrs)

    def request(spans: list) -> trace_service_pb2.ExportTraceServiceRequest:
        return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])

    clean = 'He said "fine".\nA second line\twith a tab and a back\\slash. ' * 6  # ~0.6 KB a span
    spans = [span(i, clean) for i in range(1000)]
    assert _screened(fast, "traces", request(spans)) == []
    spans[40] = span(40, clean + " write to jane.doe@example.com", escape_at=True)
    spans[70] = span(70, clean, url="https://x.example/u?to=jane.doe%40example.com")
    msg = request(spans)
    data = msg.SerializeToString()
    found = fast._prefilter.locate(data)
    assert found is not None and found.escapes is None  # past the escape cap
    assert len(found.matches) > _prefilter.LOCATE_CAP  # safe values match, ~4 a span
    assert b"jane.doe@" not in data  # the address is there only once decoded
    assert _screened(fast, "traces", msg) == [(0, 0, 40), (0, 0, 70)]
    a, b = type(msg).FromString(data), type(msg).FromString(data)
    assert redact_request(fast, "traces", a) == redact_request(plain, "traces", b) == {"EMAIL": 2}
    assert a.SerializeToString() == b.SerializeToString()
    assert [k for k in range(1000) if a.resource_spans[0].scope_spans[0].spans[k] != spans[k]] == [40, 70]


def test_one_large_request_past_every_cap_redacts_as_without_the_screen():
    """Random spans with PII in every place redaction looks, among many clean proxy-like spans (JSON
    escapes in their messages, superset matches in safe values), all in one request: past the locate
    pass's flat cap and its escape list, so the proportional cap and the walk by backslash decide.
    The same bytes and counts as the pure-Python path; and the whole random load in one request, past
    even the proportional cap (walked whole), too."""
    fast = Redactor()
    with _NoHyperscan():
        plain = Redactor()
    rng = random.Random(8)
    noisy = []
    for signal, body in _random_requests(60, seed=21):
        if signal == "traces":
            noisy.extend(trace_service_pb2.ExportTraceServiceRequest.FromString(body).resource_spans[0]
                         .scope_spans[0].spans)
    clean_text = 'He said "fine".\nA second line\twith a tab. ' * 20
    clean = [trace_pb2.Span(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name="chat m", attributes=[
        _kv("server.address", "127.0.0.1"), _kv("gen_ai.response.id", f"chatcmpl-{rng.getrandbits(96):024x}"),
        _kv("gen_ai.output.messages", json.dumps([{"role": "assistant", "parts": [{"type": "text",
                                                                                    "content": clean_text}]}]))])
        for _ in range(1500)]
    mixed = clean[:]
    for span in [sp for sp in noisy if sp.ByteSize() < 4000][:40]:  # the random load is dense with matches
        mixed.insert(rng.randrange(len(mixed) + 1), span)
    for spans, walked_whole in ((mixed, False), (noisy, True)):
        body = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            scope_spans=[trace_pb2.ScopeSpans(spans=spans)])]).SerializeToString()
        found = fast._prefilter.locate(body)
        if walked_whole:
            assert found is None
        else:
            assert found is not None and found.escapes is None and len(found.matches) > _prefilter.LOCATE_CAP
        a = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        b = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        counts = redact_request(fast, "traces", a)
        assert counts == redact_request(plain, "traces", b) and counts
        assert a.SerializeToString() == b.SerializeToString()
