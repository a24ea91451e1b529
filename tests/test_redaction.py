"""Redaction: a labelled corpus scored for precision and recall, JSON safety, the OTLP processor, speed.

Every snippet in :data:`CASES` carries the exact spans a careful human would
redact, as ``(kind, substring)`` in order of appearance (a substring that occurs
twice is listed twice). Scoring is exact: a finding counts only when kind,
start and end all agree. ``pytest -s`` prints the table and every miss.

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
from monitor.redaction.detectors import CASE_TWINS
from monitor.sidecar.proxy import capture

ROOT = Path(__file__).resolve().parents[1]

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

E, P, C, I, K, B = "EMAIL", "PHONE", "CARD", "IP", "API_KEY", "BEARER_TOKEN"

Case = tuple[str, list[tuple[str, str]]]

CASES: list[Case] = [
    # ---- support chats
    ("Hi, I'm Jane. You can reach me at jane.doe@example.com or +1 (415) 555-0132 after 5pm.",
     [(E, "jane.doe@example.com"), (P, "+1 (415) 555-0132")]),
    ("My card 4111 1111 1111 1111 was charged twice for order #123456789 on 2024-05-01.",
     [(C, "4111 1111 1111 1111")]),
    ("Please refund $1,299.00 to the card ending in 0004. Ticket 48213 — thanks!", []),
    ("Can you call me back on 555-123-4567? Office line is (212) 555-0198 ext. 12.",
     [(P, "555-123-4567"), (P, "(212) 555-0198")]),
    ("I tried to log in from 203.0.113.42 but got 'invalid password'.", [(I, "203.0.113.42")]),
    ("The API returned 429 after 1000 requests in 60 s; retry after 30 seconds.", []),
    ("Contact: 415 555 0132 (after 6pm), or text me at 415-555-0177.",
     [(P, "415 555 0132"), (P, "415-555-0177")]),
    ("Forgot your password? Click 'Reset password' and enter your email. The password is incorrect.", []),
    ("Sure! My password is hunter2, don't tell anyone.", [(K, "hunter2")]),
    ("WhatsApp: +44 7700 900 123 | Skype: jane.doe.uk | Telegram @janedoe", [(P, "+44 7700 900 123")]),
    ("Track the parcel with number 1Z999AA10123456784 or call 1-800-555-0199.", [(P, "1-800-555-0199")]),
    ("Order 555-123-4567 was delayed; invoice 212-555-0198 is attached.", []),
    # ---- code and configuration
    (f"# .env\nOPENAI_API_KEY={OPENAI}\nDATABASE_URL=postgres://app:S3cr3tPass@10.0.4.12:5432/app\nDEBUG=true",
     [(K, OPENAI), (K, "S3cr3tPass"), (I, "10.0.4.12")]),
    ('client = OpenAI(api_key=os.environ["OPENAI_API_KEY"])  # never hardcode keys', []),
    (f'anthropic_client = Anthropic(api_key="{ANTHROPIC}")', [(K, ANTHROPIC)]),
    (f"openai.api_key = '{OPENAI_LEGACY}'", [(K, OPENAI_LEGACY)]),
    (f"aws:\n  access_key_id: {AWS}\n  secret_access_key: {AWS_SECRET}\n  region: eu-west-1",
     [(K, AWS), (K, AWS_SECRET)]),
    (f"export AWS_ACCESS_KEY_ID={AWS_STS}\nexport AWS_SESSION_TOKEN=FwoGZXIvYXdzEBYaDHqa0AP1Example",
     [(K, AWS_STS), (K, "FwoGZXIvYXdzEBYaDHqa0AP1Example")]),
    (f"git clone https://{GITHUB}@github.com/acme/private-repo.git", [(K, GITHUB)]),
    (f"export GITHUB_TOKEN={GITHUB_PAT}\n# app installation token: {GITHUB_APP}", [(K, GITHUB_PAT), (K, GITHUB_APP)]),
    (f"SLACK_BOT_TOKEN={SLACK}", [(K, SLACK)]),
    (f"Slack webhook https://hooks.slack.com/services/T000/B000/XXXX and token {SLACK_USER}", [(K, SLACK_USER)]),
    (f'const key = "{GOOGLE}"; // Maps JavaScript API', [(K, GOOGLE)]),
    (f'stripe.api_key = "{STRIPE}"\nrestricted = "{STRIPE_RESTRICTED}"', [(K, STRIPE), (K, STRIPE_RESTRICTED)]),
    (f"huggingface-cli login --token {HF}", [(K, HF)]),
    (f"docker run -p 8080:80 -e HF_TOKEN={HF} -v /data:/data ghcr.io/org/img:v1.2.3", [(K, HF)]),
    (f".npmrc: //registry.npmjs.org/:_authToken={NPM}", [(K, NPM)]),
    (f"Set-Cookie: session={JWT}; HttpOnly; Secure", [(K, JWT)]),
    ('curl -H "Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543" https://api.example.com/v1/chat',
     [(B, "8f14e45fceea167a5a36dedd4bea2543")]),
    (f"GET /v1/models HTTP/1.1\nHost: api.internal\nAuthorization: Bearer {JWT}", [(B, JWT)]),
    ("proxy_set_header Authorization \"Basic dXNlcjpwYXNzd29yZA==\";", [(B, "dXNlcjpwYXNzd29yZA==")]),
    ("requests.get(url, headers={'Authorization': f'Bearer {token}'})", []),
    ("password = getpass.getpass('Password: ')", []),
    ('db:\n  host: 10.12.0.5\n  user: app\n  password: "Tr0ub4dor&3"', [(I, "10.12.0.5"), (K, "Tr0ub4dor&3")]),
    ("def login(username: str, password: str) -> bool:\n    return check(username, password=password)", []),
    ("The Basic plan costs $9.99/month; Bearer bonds are not accepted.", []),
    ("Your API key should look like sk-... (never share it); see the sk-learn docs.", []),
    (f"Here is the deploy key:\n{PEM}\nkeep it safe", [(K, PEM)]),
    ("kubectl create secret generic db --from-literal=password='pa55w0rd!' --from-literal=username=admin",
     [(K, "pa55w0rd!")]),
    ("pip install torch==2.3.0 --index-url https://download.pytorch.org/whl/cu121 && export PASSWORD_MIN_LENGTH=12",
     []),
    ("for i in range(0, 100): x[::2] = arr[::-1]  # std::vector<int> a; Foo::bar(); dead::beef", []),
    ("Authorization header: Token abc123 is not a bearer token; they look like 'Bearer <token>'.", []),
    # ---- logs and stack traces
    ("2024-05-01T12:30:45.123Z ERROR upstream connect error: 10.0.0.15:8000 connection refused (pid 48213)",
     [(I, "10.0.0.15")]),
    ('Traceback (most recent call last):\n  File "/app/server.py", line 142, in handle\n'
     '    conn = connect("192.168.1.20", 5432)\nConnectionRefusedError: [Errno 111] Connection refused',
     [(I, "192.168.1.20")]),
    ("INFO 2024-05-01 12:30:45 vllm.engine: Avg prompt throughput: 1523.4 tokens/s, "
     "GPU KV cache usage: 87.5%, running: 12 reqs", []),
    ("client 2001:db8:85a3::8a2e:370:7334 port 51234 sent 1048576 bytes", [(I, "2001:db8:85a3::8a2e:370:7334")]),
    ("full form 2001:0db8:85a3:0000:0000:8a2e:0370:7334 and mapped ::ffff:192.0.2.128 here",
     [(I, "2001:0db8:85a3:0000:0000:8a2e:0370:7334"), (I, "::ffff:192.0.2.128")]),
    ("listening on [::]:8000 and [fe80::1ff:fe23:4567:890a%eth0]:9000", [(I, "fe80::1ff:fe23:4567:890a%eth0")]),
    ('nginx: 198.51.100.7 - - [01/May/2024:12:30:45 +0000] "POST /v1/chat/completions HTTP/1.1" 200 5123',
     [(I, "198.51.100.7")]),
    ("Build 2024.05.01.1234 of torch 2.3.0+cu121 with CUDA 12.1 on driver 550.54.15", []),
    ("Python 3.11.7, numpy 1.26.4, version 1.2.3.4 of the plugin, tag v10.0.0.1", []),
    ("Request id 550e8400-e29b-41d4-a716-446655440000 commit 9fceb02d0ae598e95dc970b74767f19372d61af8", []),
    ("Timestamp 1714566645123 (ms), epoch 1714566645, duration 12.345 s", []),
    ('grpc._channel._InactiveRpcError: details = "failed to connect to all addresses; last error: UNKNOWN: '
     'ipv6:%5B::1%5D:50051: Failed to connect" debug_error_string = "peer ipv4:127.0.0.1:50051"',
     [(I, "127.0.0.1")]),
    ("commit 3f786850e387550fdab836ed7e6dc881de23001b\nAuthor: Jane Doe <jane@example.com>\n"
     "Date:   Wed May 1 12:30:45 2024 +0200", [(E, "jane@example.com")]),
    ("Server at 172.16.254.1 forwards to 8.8.8.8; 256.1.1.1 is invalid, as is 1.2.3.",
     [(I, "172.16.254.1"), (I, "8.8.8.8")]),
    ("hey @channel, the staging box is 10.1.2.3 (ssh ubuntu@10.1.2.3), creds in 1Password",
     [(I, "10.1.2.3"), (I, "10.1.2.3")]),
    # ---- letters and e-mails, several languages
    ("Sehr geehrte Frau Müller,\nbitte senden Sie die Rechnung Nr. 2024-00123 an buchhaltung@firma-beispiel.de. "
     "Bei Fragen erreichen Sie mich unter +49 30 12345678 oder mobil 0171 2345678.\nMit freundlichen Grüßen",
     [(E, "buchhaltung@firma-beispiel.de"), (P, "+49 30 12345678"), (P, "0171 2345678")]),
    ("Ihre Bestellung 4711-0815 wurde am 01.05.2024 versandt. Telefon: 089 / 123 456 78",
     [(P, "089 / 123 456 78")]),
    ("Ihr neues Passwort lautet: Sommer2024! Bitte ändern Sie es nach der ersten Anmeldung.",
     [(K, "Sommer2024!")]),
    ("Hallo Jürgen, schreib mir an jürgen.weiß@beispiel.de oder ruf an: 030 1234567.",
     [(E, "jürgen.weiß@beispiel.de"), (P, "030 1234567")]),
    ("Bonjour, mon adresse est élodie.dupont@exemple.fr et mon numéro est le 06 12 34 56 78. "
     "Facture n° FA-2024-0456.", [(E, "élodie.dupont@exemple.fr"), (P, "06 12 34 56 78")]),
    ("Appelez-moi au +33 1 42 68 53 00 ou écrivez à contact@societe.fr.",
     [(P, "+33 1 42 68 53 00"), (E, "contact@societe.fr")]),
    ("Votre mot de passe : Azerty#2024. Le montant de 1 299 € sera prélevé le 01/06/2024.", [(K, "Azerty#2024")]),
    ("Hola, soy Lucía. Mi correo es lucia.garcia@correo.es y mi móvil 612 34 56 78. "
     "El pedido 100234567 cuesta 1.299,00 €.", [(E, "lucia.garcia@correo.es"), (P, "612 34 56 78")]),
    ("Llámame al 91 123 45 67 o al +34 612 345 678.", [(P, "91 123 45 67"), (P, "+34 612 345 678")]),
    ("Factura 2024-000123, NIF B12345678, total 1.234,56 €, teléfono de contacto 976 12 34 56",
     [(P, "976 12 34 56")]),
    ("From: Support Team <support@acme-corp.com>\nTo: bob.smith+billing@gmail.com\n"
     "Subject: Invoice INV-2024-0042 for $4,500.00",
     [(E, "support@acme-corp.com"), (E, "bob.smith+billing@gmail.com")]),
    ("Our London office: 020 7946 0958, mobile 07700 900123. VAT reg GB 123 4567 89.",
     [(P, "020 7946 0958"), (P, "07700 900123")]),
    ("Email me: no-reply@ or user@localhost; assets icon@2x.png and logo@3x.webp; @decorator; a@b", []),
    # ---- invoices, payments, identifiers
    ("INVOICE #2024-0815\nDate: 2024-05-01\nCustomer: ACME GmbH, Musterstraße 12, 10115 Berlin\n"
     "Amount due: €1.299,00 (incl. 19% VAT)\nIBAN: DE89 3704 0044 0532 0130 00\nPayment ref: 0049 1234 5678", []),
    ("Order #123456789 shipped via DHL, tracking 00340434161234567890, total $1,299.00", []),
    ("Paid with Mastercard 5500-0000-0000-0004 and Amex 3782 822463 10005; declined: 4111 1111 1111 1112, "
     "1234 5678 9012 3456.", [(C, "5500-0000-0000-0004"), (C, "3782 822463 10005")]),
    ("Test cards: 4242424242424242 (Visa), 6011 1111 1111 1117 (Discover), 3530 1113 3330 0000 (JCB), "
     "4000 0566 5566 5556 (Visa debit), 5555 5555 5555 4444.",
     [(C, "4242424242424242"), (C, "6011 1111 1111 1117"), (C, "3530 1113 3330 0000"),
      (C, "4000 0566 5566 5556"), (C, "5555 5555 5555 4444")]),
    ("Invalid: 4111-1111-1111-1111-0, 5500 0000 0000 0005, 6011 0000 0000 0000, 4111 1111-1111 1111", []),
    ("ISBN 978-3-16-148410-0 and ISBN-10 0-306-40615-2; ISBN 9780306406157; see page 1234.", []),
    ("Call center hours: 9-17, Mon–Fri. Ref 2024/05/01-0042. Room 1205, extension 4471.", []),
    ("The model has 7000000000 parameters (7B) and a context of 128000 tokens; batch 1048576.", []),
    ("Latency p50 120 ms, p99 1,250 ms; throughput 3.2k tok/s; 99.9% uptime; score 0.8734.", []),
    ("Price list: 1 299 €, 12 999 €, 129 999 €; shipping 4,99 €; Δ +12.5% vs. +3 pts.", []),
    ("Coordinates 52.5200, 13.4050; altitude 34 m; ratio 16:9; time 12:30:45; MAC 00:1A:2B:3C:4D:5E", []),
    ("Phone-like but not phones: ZIP 94105-1234, SSN-style 123-45-6789, year range 1999-2024, "
     "ISO 8601 2024-05-01T12:30:45+02:00, UTC+05:30.", []),
    ("Account 12345678901234567890, IBAN GB82 WEST 1234 5698 7654 32, Konto 0123456789", []),
    ("Meeting on 01.05.2024 at 10:30 in room 0.12; bring the 2023/24 report and 3 copies.", []),
    ("Serial S/N 0012-3456-7890, part no. 0815-4711-000, port 0 8080 9090", []),
    # ---- JSON message content and mixed
    ('{"role":"user","content":"My email is maria@example.org and my IP is 192.0.2.55"}',
     [(E, "maria@example.org"), (I, "192.0.2.55")]),
    ('{"name":"send_invoice","arguments":{"to":"billing@example.com","card":"5555-5555-5555-4444","amount":129.99}}',
     [(E, "billing@example.com"), (C, "5555-5555-5555-4444")]),
    (f"Mixed: email a.b@c.io, card 5555 5555 5555 4444, ip 2001:db8::ff00:42:8329, key {AWS}, "
     "phone +49 (0)30 1234 5678.",
     [(E, "a.b@c.io"), (C, "5555 5555 5555 4444"), (I, "2001:db8::ff00:42:8329"), (K, AWS),
      (P, "+49 (0)30 1234 5678")]),
    ("Already redacted: [EMAIL], [PHONE], password=[API_KEY], Bearer [BEARER_TOKEN].", []),
    # ---- more look-alikes
    ("Phone: n/a. Mobile: see CRM record 0815-4711. The meeting ID is 854 2231 9987, passcode 123456.", []),
    ("x = 0.5 * (a + b) / 1_000_000; y = 06/12/2024; z = 555-1234; boarding pass: 12345678", []),
    ("PASSWORD=correcthorsebatterystaple\nDB_PASS=hunter22\nsmtp.pass: 'M4il!'",
     [(K, "correcthorsebatterystaple"), (K, "hunter22"), (K, "M4il!")]),
    ("curl -u admin:Pa55word! https://10.20.30.40:9200/_cluster/health; docker run -u 1000:1000 img",
     [(K, "Pa55word!"), (I, "10.20.30.40")]),
    ("Llamé al 600 123 456 pero nadie contestó; la población es de 612 345 678 habitantes.",
     [(P, "600 123 456")]),
    # a version number inside a URL path is indistinguishable from an address: an accepted false positive
    ("Version 2.0.0.1 is out; see https://example.com/releases/2.0.0.1", []),
]


# ---------------------------------------------------------------------- scoring


def _expected(text: str, spans: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    pos = 0
    for kind, sub in spans:
        start = text.find(sub, pos)
        assert start >= 0, f"labelled substring {sub!r} not found in {text!r} after {pos}"
        out.append((kind, start, start + len(sub)))
        pos = start + len(sub)
    return out


def _apply(text: str, spans: list[tuple[str, int, int]]) -> str:
    parts, pos = [], 0
    for kind, start, end in sorted(spans, key=lambda s: s[1]):
        parts += [text[pos:start], f"[{kind}]"]
        pos = end
    return "".join(parts) + text[pos:]


def _score(redactor: Redactor) -> tuple[dict[str, Counter], list[str]]:
    per: dict[str, Counter] = {}
    misses: list[str] = []
    for text, spans in CASES:
        want = set(_expected(text, spans))
        got = {(f.kind, f.start, f.end) for f in redactor.scan(text)}
        for kind, start, end in got | want:
            c = per.setdefault(kind, Counter())
            if (kind, start, end) in got and (kind, start, end) in want:
                c["tp"] += 1
            elif (kind, start, end) in got:
                c["fp"] += 1
                misses.append(f"FP {kind:<12} {text[start:end]!r}  in  {text[:70]!r}")
            else:
                c["fn"] += 1
                misses.append(f"FN {kind:<12} {text[start:end]!r}  in  {text[:70]!r}")
    return per, misses


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def test_labelled_corpus_precision_and_recall():
    assert len(CASES) >= 60
    per, misses = _score(Redactor())
    total = Counter()
    rows = ["", f"{'kind':<13}{'tp':>5}{'fp':>5}{'fn':>5}{'precision':>11}{'recall':>8}"]
    for kind in sorted(per):
        c = per[kind]
        total.update(c)
        rows.append(f"{kind:<13}{c['tp']:>5}{c['fp']:>5}{c['fn']:>5}"
                    f"{_ratio(c['tp'], c['tp'] + c['fp']):>11.3f}{_ratio(c['tp'], c['tp'] + c['fn']):>8.3f}")
    precision = _ratio(total["tp"], total["tp"] + total["fp"])
    recall = _ratio(total["tp"], total["tp"] + total["fn"])
    rows.append(f"{'overall':<13}{total['tp']:>5}{total['fp']:>5}{total['fn']:>5}{precision:>11.3f}{recall:>8.3f}")
    rows.append(f"({len(CASES)} snippets, {sum(len(s) for _, s in CASES)} labelled spans)")
    print("\n".join(rows + misses))
    assert precision >= 0.95 and recall >= 0.95, "\n".join(misses)
    for kind, c in per.items():
        assert _ratio(c["tp"], c["tp"] + c["fp"]) >= 0.9, (kind, "\n".join(misses))
        assert _ratio(c["tp"], c["tp"] + c["fn"]) >= 0.9, (kind, "\n".join(misses))
    card = per["CARD"]
    assert card["fp"] == 0 and card["fn"] == 0, "\n".join(misses)  # Luhn + issuer ranges: exact


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


def test_processor_redacts_content_keys_and_events_only():
    msg = _trace_request()
    before = msg.SerializeToString()
    counts = redact_request(Redactor(), "traces", msg)
    assert msg.SerializeToString() != before
    span = msg.resource_spans[0].scope_spans[0].spans[0]
    attrs = _attrs(span.attributes)
    # untouched: not content
    assert attrs["server.address"] == "10.0.0.7"
    assert attrs["gen_ai.request.model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert attrs["user.email_hint"] == "ops@example.com"
    assert attrs["server.port"] == 8000
    assert _attrs(msg.resource_spans[0].resource.attributes)["host.ip"] == "10.0.0.5"
    assert _attrs(span.events[2].attributes)["exception.message"] == "connect 10.9.9.9 failed"
    # redacted: content
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
    assert counts == {"EMAIL": 3, "API_KEY": 1, "PHONE": 1, "CARD": 1, "IP": 2}
    # idempotent: a second pass finds nothing
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


def test_processor_skips_spans_without_content():
    span = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="GET /health",
                          attributes=[_kv("net.peer.ip", "10.0.0.1"), _kv("http.url", "http://a@b.io/")])
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
    (RedactionSettings(detectors=["email", "ssn"]), "unknown detector"),
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
    for _ in range(3):
        t0 = time.perf_counter()
        out, counts = r.redact_with_counts(text)
        best = min(best, time.perf_counter() - t0)
    print(f"\nredacted {len(text) / 1e6:.2f} MB in {best * 1000:.0f} ms (best of 3); findings {dict(counts)}")
    assert sum(counts.values()) > 100 and "[CARD]" in out
    assert best < 1.0


# ---------------------------------------------------------------------- more content: events, URLs, logs


def _span_request(attributes=(), events=()) -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="op",
                          attributes=list(attributes), events=list(events))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])


# (attribute, value, value after redaction); None: unchanged. Only query strings are redacted, decoded.
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
    ("url.full", "https://example.com/users/10.0.0.1/jane@example.com", None),  # no query string
    ("url.full", "https://example.com/?email=[EMAIL]&n=1", None),  # already redacted
    ("url.query", "email=a.b%40c.io&debug=true", "email=[EMAIL]&debug=true"),
    ("url.query", f"api_key={OPENAI}", "api_key=[API_KEY]"),
    ("url.query", "jane%40example.com", "[EMAIL]"),
    ("url.query", "q=order+123456789&page=3", None),
    ("http.url", "http://a@b.io/?email=x%40y.io", None),  # not a URL attribute this covers
]

# (event name, attributes, attributes after redaction): content keys of any event, every attribute of messages
EVENT_CASES: list[tuple[str, dict, dict]] = [
    ("gen_ai.evaluation.result",
     {"gen_ai.output.messages": '[{"content":"mail a@b.io"}]', "note": "call 555-123-4567"},
     {"gen_ai.output.messages": '[{"content":"mail [EMAIL]"}]', "note": "call 555-123-4567"}),
    ("exception", {"exception.message": "connect 10.9.9.9 failed", "gen_ai.prompt": "my IP is 203.0.113.9"},
     {"exception.message": "connect 10.9.9.9 failed", "gen_ai.prompt": "my IP is [IP]"}),
    ("tool.result", {"gen_ai.tool.call.result": '{"email": "carol@example.net", "n": 3}'},
     {"gen_ai.tool.call.result": '{"email":"[EMAIL]","n":3}'}),
    ("feedback", {"input.value": "reach me at +44 7700 900 123",
                  "llm.output_messages.0.content": "4111 1111 1111 1111"},
     {"input.value": "reach me at [PHONE]", "llm.output_messages.0.content": "[CARD]"}),
    ("gen_ai.assistant.message", {"content": "served from 192.0.2.1", "id": "msg-1"},
     {"content": "served from [IP]", "id": "msg-1"}),
    ("audit", {"message": "user bob@example.com logged in"}, {"message": "user bob@example.com logged in"}),
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
def test_events_of_any_name_with_content_keys(name, attributes, expected):
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
    t0 = time.perf_counter()
    make_processor(Redactor(), seen.append)("traces", msg)
    elapsed = time.perf_counter() - t0
    out = _attrs(msg.resource_spans[0].scope_spans[0].spans[0].attributes)["gen_ai.input.messages"]
    print(f"\n{len(value) / 1e6:.0f} MB prompt redacted in {elapsed * 1000:.0f} ms")
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
