"""Access control on every port, attacked from real clients (README "Security").

Each listening endpoint (OTLP gRPC and HTTP, the admin endpoint, /metrics, the dashboards) is sent
what an attacker would: no token, a wrong token, a token in the query string, a replayed request,
a cross-site request from a web page (text/plain body, foreign Origin) and one through DNS
rebinding (foreign Host). Clients are real: the official OTLP exporters (headers from
OTEL_EXPORTER_OTLP_HEADERS, TLS with a CA of the test's own), http.client, grpc, a websocket
client speaking Streamlit's protocol, Chromium, and the ``monitor`` CLI. A monitor bound to
0.0.0.0 with every token set is started as a subprocess; afterwards no secret appears in its logs,
/metrics, ``monitor status``, ``monitor alerts list`` or any stored row.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from conftest import MONITOR, chdb_query, free_port, otlp_request, wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from pydantic import SecretStr
from test_admin import SECRET, Hook, store_untouched
from test_embedded import _count

from monitor.auth import (bearer_ok, check_exposure, host_allowed, host_names_bind, is_loopback, listeners,
                          query_has_credential, read_token_file, scrub, write_token_file)
from monitor.errors import ConfigError
from monitor.runtime.apps import Embedded

OTLP_TOKEN = "otlp-token-4f1d9c2e8b7a6d5c"


def call(port: int, method: str, path: str, body: bytes | str = b"", headers: dict | None = None,
         context: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
    """``(status, headers, body)`` from a raw HTTP client: headers (Host included) exactly as given;
    ``"Host": None`` sends none."""
    conn = (http.client.HTTPSConnection(host, port, context=context, timeout=30) if context is not None
            else http.client.HTTPConnection(host, port, timeout=30))
    headers = dict(headers or {})
    try:
        if "Host" in headers and headers["Host"] is None:
            del headers["Host"]
            data = body.encode() if isinstance(body, str) else body
            conn.putrequest(method, path, skip_host=True)
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                conn.putheader(k, v)
            conn.endheaders(data)
        else:
            conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# ============================================================================ the primitives


def test_the_primitives():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.5", "monitor.internal", "127.0.0.1.evil"))
    assert bearer_ok("Bearer abc", "abc") and bearer_ok("bearer  abc ", "abc")
    assert not any(bearer_ok(h, "abc") for h in (None, "", "abc", "Bearer ab", "Bearer abcd", "Basic abc",
                                                  "Bearer", "Bearer \u00e9abc"))
    assert query_has_credential([("token", "x")]) and query_has_credential([("Access_Token", "")])
    assert query_has_credential([("q", "...secret-value...")], "secret-value")
    assert not query_has_credential([("history", "20"), ("range", "1h")], "secret-value")
    # DNS rebinding: the page's own name is never accepted, IP literals and localhost are
    for h in ("127.0.0.1:9466", "[::1]:9466", "localhost", "localhost.:80", "10.1.2.3:4318", "app.localhost"):
        assert host_allowed(h, "127.0.0.1"), h
    for h in ("evil.example", "evil.example:9466", "127.0.0.1.nip.io", "", "a@b", "[::1", "[::1]x"):
        assert not host_allowed(h, "127.0.0.1"), h
    assert host_allowed("monitor.internal:4318", "monitor.internal")
    assert host_names_bind("127.0.0.1:9466", "127.0.0.1") and host_names_bind("localhost:9466", "127.0.0.1")
    assert not host_names_bind("10.0.0.1:9466", "127.0.0.1") and not host_names_bind(None, "127.0.0.1")
    assert host_names_bind("10.0.0.1:9466", "0.0.0.0") and not host_names_bind("evil.example", "0.0.0.0")
    assert scrub("HTTP 400: bad key abcd1234 in body", [SecretStr("abcd1234"), None, "ab"]) == \
        "HTTP 400: bad key [REDACTED] in body"


def test_an_unauthenticated_port_off_loopback_stops_the_command(settings):
    settings.receiver.host = "0.0.0.0"
    settings.telemetry.metrics_host = "10.0.0.7"
    settings.dashboard.host = "::"
    with pytest.raises(ConfigError) as err:
        Embedded(settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update={"enabled": True})}))
    text = str(err.value)
    for fix in ("MONITOR_RECEIVER__AUTH_TOKEN", "MONITOR_TELEMETRY__AUTH_TOKEN", "MONITOR_DASHBOARD__AUTH_TOKEN"):
        assert fix in text, text
    settings.proxy.upstream, settings.proxy.host = "http://127.0.0.1:1", "0.0.0.0"
    problems = [x.what for x in listeners(settings, receiver=True, proxy=True, dashboard=True)
                if not x.authenticated and not is_loopback(x.host)]
    assert problems == ["the OTLP receiver", "the capture proxy", "the dashboards", "/metrics"]
    settings.receiver.auth_token = SecretStr(OTLP_TOKEN)
    settings.proxy.auth_token = "proxy-token"
    settings.dashboard.auth_token = SecretStr("dash")
    settings.telemetry.auth_token = SecretStr("metrics")
    check_exposure(listeners(settings, receiver=True, proxy=True, dashboard=True))  # now fine


def test_token_files_are_owner_only_and_a_readable_one_is_refused(tmp_path):
    path = tmp_path / "run" / "admin-1.token"
    write_token_file(path, "t1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_token_file(path) == "t1"
    write_token_file(path, "t2")  # replaced atomically
    assert read_token_file(path) == "t2" and [p.name for p in path.parent.iterdir()] == [path.name]
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_token_file(path)
    assert read_token_file(tmp_path / "nothing") is None


# ============================================================================ the admin endpoint

ADMIN_TOKEN = "admin-token-" + "7" * 32


class _Admin:
    """A real AdminServer with this module's token on its own event loop thread, as ``monitor up``
    runs it, with a webhook channel whose receiver records what reaches it."""

    def __init__(self, store, settings):
        import asyncio
        import threading

        from monitor.alerts.service import AlertService
        from monitor.checks.runner import CheckRunner
        from monitor.checks.slo import SloCheck
        from monitor.config import AlertsSettings
        from monitor.runtime.admin import AdminServer
        from monitor.selfmetrics import SelfMetrics

        self.hook = Hook()
        alerts = AlertsSettings(channels={"hook": {"type": "webhook", "url": self.hook.url, "secret": SECRET,
                                                   "timeout_s": 2}}, poll_interval_s=0.1)
        settings = settings.model_copy(update={"alerts": alerts})
        self.metrics = SelfMetrics()
        self.server = AdminServer(CheckRunner(store, settings.checks, checks=[SloCheck()]), "127.0.0.1", 0,
                                  AlertService(store, settings.alerts, settings.checks.min_samples),
                                  token=ADMIN_TOKEN, metrics=self.metrics)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def close(self):
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.hook.close()


@pytest.fixture
def admin(store, settings):
    a = _Admin(store, settings)
    yield a
    a.close()


PIN = json.dumps({"model": "llama", "from": "-2h", "to": "-1h"})


def _admin_attacks(port: int) -> list[tuple[str, str, str, bytes, dict, int]]:
    """(what, method, path, body, headers, expected status): each takes one defence away at most."""
    own = f"127.0.0.1:{port}"
    ok = {"Host": own, "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    wrong = "admin-token-" + "8" * 32  # same length: only the compare can tell
    return [
        # what was measured before: a cross-site POST from a page, text/plain, any Origin and Host
        ("cross-site text/plain pin", "POST", "/admin/baseline", PIN,
         {"Host": "evil.example", "Origin": "https://evil.example", "Content-Type": "text/plain"}, 403),
        ("cross-site test alert", "POST", "/admin/alerts/test", '{"channel": "hook"}',
         {"Host": own, "Origin": "https://evil.example", "Content-Type": "text/plain"}, 403),
        ("cross-site check run", "POST", "/admin/check", "{}",
         {"Host": own, "Origin": "null", "Content-Type": "text/plain"}, 403),
        # DNS rebinding: the page's own name as Host, even with everything else right
        ("rebinding", "POST", "/admin/baseline", PIN, {**ok, "Host": f"rebind.evil.example:{port}"}, 403),
        ("rebinding GET", "GET", "/admin/alerts", "", {**ok, "Host": "rebind.evil.example"}, 403),
        ("rebinding, a name that starts like localhost", "GET", "/admin/baselines", "",
         {**ok, "Host": f"localhost.evil.example:{port}"}, 403),
        ("browser fetch (Sec-Fetch-Site)", "POST", "/admin/baseline", PIN, {**ok, "Sec-Fetch-Site": "cross-site"}, 403),
        ("browser Origin, right token", "POST", "/admin/baseline", PIN, {**ok, "Origin": f"http://{own}"}, 403),
        ("Origin null (a sandboxed frame, a file:// page), right token", "POST", "/admin/alerts/test",
         '{"channel": "hook"}', {**ok, "Origin": "null"}, 403),
        ("no token", "POST", "/admin/baseline", PIN, {k: v for k, v in ok.items() if k != "Authorization"}, 401),
        ("no token GET", "GET", "/admin/health", "", {"Host": own}, 401),
        ("wrong token", "POST", "/admin/baseline", PIN, {**ok, "Authorization": f"Bearer {wrong}"}, 401),
        ("token prefix", "POST", "/admin/baseline", PIN, {**ok, "Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, 401),
        ("Basic auth", "POST", "/admin/baseline", PIN, {**ok, "Authorization": f"Basic {ADMIN_TOKEN}"}, 401),
        ("token in the query", "POST", f"/admin/baseline?token={ADMIN_TOKEN}", PIN, ok, 400),
        ("access_token in the query", "GET", f"/admin/alerts?access_token={ADMIN_TOKEN}", "", ok, 400),
        ("token as a value", "GET", f"/admin/alerts?history=5&x={ADMIN_TOKEN}", "", ok, 400),
        ("query token only", "GET", f"/admin/alerts?token={ADMIN_TOKEN}", "",
         {k: v for k, v in ok.items() if k != "Authorization"}, 400),
        ("right token, text/plain", "POST", "/admin/baseline", PIN, {**ok, "Content-Type": "text/plain"}, 415),
        ("right token, a form", "POST", "/admin/alerts/test", "channel=hook",
         {**ok, "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ("right token, no type", "POST", "/admin/check", "{}", {k: v for k, v in ok.items() if k != "Content-Type"},
         415),
    ]


def test_admin_attacks_are_refused_and_change_nothing(admin, caplog):
    attacks = _admin_attacks(admin.port)
    got = [(what, call(admin.port, method, path, body, headers)) for what, method, path, body, headers, _ in attacks]
    wrong = [(what, status, raw[:200]) for (what, (status, _, raw)), a in zip(got, attacks) if status != a[-1]]
    assert wrong == []
    for what, (status, headers, raw) in got:
        assert headers["content-type"].startswith("application/json") and set(json.loads(raw)) == {"error"}, what
        assert ADMIN_TOKEN not in raw.decode(), what
        if status == 401:
            assert headers.get("www-authenticate") == "Bearer"
    # nothing happened: no baseline pinned, no notification enqueued or sent, no check ran
    assert store_untouched(admin) and admin.hook.requests == []
    assert admin.server.runner.store.query_rows("SELECT count() FROM check_results")[0][0] == 0
    refused = {k: v for k, v in _samples(admin.metrics, "monitor_auth_refused_total").items() if k[0] == "admin"}
    assert refused == {("admin", "bad_host"): 4, ("admin", "browser_origin"): 5, ("admin", "unauthenticated"): 5,
                       ("admin", "credential_in_query"): 4, ("admin", "content_type"): 3}
    assert ADMIN_TOKEN not in caplog.text
    # no Host at all: aiohttp itself refuses the request (HTTP/1.1 requires one)
    assert call(admin.port, "GET", "/admin/baselines", "", {"Host": None, "Authorization": f"Bearer {ADMIN_TOKEN}"}
                )[0] == 400
    # the CLI's request still works
    status, _, raw = call(admin.port, "POST", "/admin/baseline", PIN, {
        "Host": f"localhost:{admin.port}", "Authorization": f"Bearer {ADMIN_TOKEN}",
        "Content-Type": "application/json"})
    assert status == 200 and json.loads(raw)["model"] == "llama"


def test_a_replayed_admin_request_works_until_the_monitor_restarts(admin, store, settings):
    """Tokens are static bearer tokens: a captured request replays (byte for byte, on loopback: only a
    local process could capture it), but ``monitor up`` makes a new token at every start."""
    raw = (f"POST /admin/baseline HTTP/1.1\r\nHost: 127.0.0.1:{admin.port}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(PIN)}\r\nConnection: close\r\n\r\n{PIN}").encode()

    def replay(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(raw)
            return b"".join(iter(lambda: s.recv(65536), b""))

    assert replay(admin.port).startswith(b"HTTP/1.1 200") and replay(admin.port).startswith(b"HTTP/1.1 200")
    import asyncio

    from monitor.runtime.admin import AdminServer, server_token

    restarted = AdminServer(admin.server.runner, "127.0.0.1", 0, token=server_token(settings))
    port = asyncio.run_coroutine_threadsafe(restarted.start(), admin.loop).result(30)
    try:
        answer = replay(port)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    finally:
        asyncio.run_coroutine_threadsafe(restarted.stop(), admin.loop).result(30)


def _samples(metrics, name: str) -> dict[tuple, float]:
    out = {}
    for fam in metrics.registry.collect():
        for s in fam.samples:
            if s.name == name:
                out[tuple(s.labels.values())] = s.value
    return out


# ============================================================================ OTLP


@pytest.fixture
def otlp(settings, monkeypatch):
    settings.receiver.auth_token = SecretStr(OTLP_TOKEN)
    app = Embedded(settings)
    app.start()
    yield app
    app.stop()


def test_otlp_attacks_are_refused_and_the_official_exporters_get_in(otlp, store, settings, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from otel_clients import span_exporter

    http_port, grpc_port = settings.receiver.http_port, settings.receiver.grpc_port
    body = otlp_request(1)
    pb = {"Content-Type": "application/x-protobuf"}
    cases = [
        ("no token", "/v1/traces", pb, 401),
        ("wrong token", "/v1/traces", {**pb, "Authorization": "Bearer " + OTLP_TOKEN.upper()}, 401),
        ("Basic", "/v1/traces", {**pb, "Authorization": f"Basic {OTLP_TOKEN}"}, 401),
        ("token in the query", f"/v1/traces?token={OTLP_TOKEN}", pb, 400),
        ("api_key in the query, right header", "/v1/traces?api_key=x",
         {**pb, "Authorization": f"Bearer {OTLP_TOKEN}"}, 400),
        ("token as a query value, right header", f"/v1/traces?q={OTLP_TOKEN}",
         {**pb, "Authorization": f"Bearer {OTLP_TOKEN}"}, 400),
    ]
    for what, path, headers, expected in cases:
        status, h, _ = call(http_port, "POST", path, body, headers)
        assert status == expected, what
        assert status != 401 or h.get("www-authenticate") == "Bearer"
    # gRPC: no metadata, a wrong token, the token without its scheme
    stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
    for metadata in ((), (("authorization", "Bearer nope"),), (("authorization", OTLP_TOKEN),)):
        with pytest.raises(grpc.RpcError) as err:
            stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(body), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    time.sleep(1)
    assert _count(store, "otel_traces") == 0

    # the official exporters, configured the standard way: OTEL_EXPORTER_OTLP_HEADERS (URL-encoded)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{OTLP_TOKEN}")
    for protocol, port in (("grpc", grpc_port), ("http", http_port)):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(span_exporter(protocol, port)))
        with provider.get_tracer("t").start_as_current_span(f"chat via {protocol}") as s:
            s.set_attribute("gen_ai.operation.name", "chat")
        provider.shutdown()
    wait_until(lambda: _count(store, "otel_traces") == 2, message="the 2 spans of the official exporters")
    # a replayed request is accepted (static bearer tokens; TLS keeps them off the wire)
    for _ in range(2):
        assert call(http_port, "POST", "/v1/traces", body, {**pb, "Authorization": f"Bearer {OTLP_TOKEN}"})[0] == 200
    refused = _samples(otlp.metrics, "monitor_auth_refused_total")
    assert refused == {("otlp_http", "unauthenticated"): 3, ("otlp_http", "credential_in_query"): 3,
                       ("otlp_grpc", "unauthenticated"): 3}


def test_without_a_token_the_loopback_receiver_refuses_a_rebinding_host(settings):
    app = Embedded(settings)
    app.start()
    try:
        port = settings.receiver.http_port
        pb = {"Content-Type": "application/x-protobuf"}
        for host, expected in (("evil.example", 403), (f"evil.example:{port}", 403), (f"127.0.0.1:{port}", 200),
                               (f"localhost:{port}", 200), (f"[::1]:{port}", 200)):
            assert call(port, "POST", "/v1/traces", otlp_request(2), {**pb, "Host": host})[0] == expected, host
            assert call(port, "GET", "/health", headers={"Host": host})[0] == expected, host
        assert call(port, "POST", "/v1/traces?token=abc", otlp_request(3), pb)[0] == 400
    finally:
        app.stop()


# ============================================================================ TLS


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    import ipaddress

    now = dt.datetime.now(dt.timezone.utc)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key, cert) -> None:
        out[f"{stem}_key"] = d / f"{stem}.key"
        out[f"{stem}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
        out[f"{stem}_key"].chmod(0o600)
        out[stem] = d / f"{stem}.pem"
        out[stem].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("llm-monitor test CA")).issuer_name(name("llm-monitor test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    save("ca", ca_key, ca)
    for stem, usage, san in (("server", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("otel-client")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        save(stem, key, cert)
    return out


def test_otlp_over_tls_with_the_official_exporters(settings, store, tmp_path, monkeypatch):
    import grpc as _grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    # requests lets these override a session's own CA file (the HTTP exporter's certificate_file)
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    pki = make_pki(tmp_path / "pki")
    settings.receiver.tls = settings.receiver.tls.model_copy(update={"cert_file": pki["server"],
                                                                     "key_file": pki["server_key"]})
    settings.receiver.auth_token = SecretStr(OTLP_TOKEN)
    app = Embedded(settings)
    app.start()
    try:
        http_port, grpc_port = settings.receiver.http_port, settings.receiver.grpc_port
        auth = {"authorization": f"Bearer {OTLP_TOKEN}"}
        exporters = [
            GrpcExporter(endpoint=f"https://localhost:{grpc_port}", headers=auth,
                         credentials=_grpc.ssl_channel_credentials(pki["ca"].read_bytes())),
            HttpExporter(endpoint=f"https://localhost:{http_port}/v1/traces", headers=auth,
                         certificate_file=str(pki["ca"])),
        ]
        for i, exporter in enumerate(exporters):
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            with provider.get_tracer("t").start_as_current_span(f"chat over tls {i}") as s:
                s.set_attribute("gen_ai.operation.name", "chat")
            provider.shutdown()
        wait_until(lambda: _count(store, "otel_traces") == 2, message="2 spans over TLS")
        # a client that does not trust the CA, and one speaking plaintext, get nothing in
        with pytest.raises(ssl.SSLCertVerificationError):
            call(http_port, "POST", "/v1/traces", otlp_request(5), {"Content-Type": "application/x-protobuf"},
                 context=ssl.create_default_context())
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(http_port, "POST", "/v1/traces", otlp_request(6), {"Content-Type": "application/x-protobuf"})
        trusted = ssl.create_default_context(cafile=str(pki["ca"]))
        assert call(http_port, "POST", "/v1/traces", otlp_request(7), {"Content-Type": "application/x-protobuf"},
                    context=trusted, host="localhost")[0] == 401  # TLS is not authentication
    finally:
        app.stop()


def test_otlp_with_client_certificates(settings, tmp_path):
    """Mutual TLS authenticates clients as a token would: bound off loopback it needs no token."""
    pki = make_pki(tmp_path / "pki")
    settings.receiver.tls = settings.receiver.tls.model_copy(update={
        "cert_file": pki["server"], "key_file": pki["server_key"], "client_ca_file": pki["ca"]})
    settings.receiver.host = "0.0.0.0"
    settings.receiver.grpc_enabled = False
    check_exposure(listeners(settings, receiver=True))
    app = Embedded(settings)
    app.start()
    try:
        port = settings.receiver.http_port
        pb = {"Content-Type": "application/x-protobuf"}
        with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
        with_cert.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
        assert call(port, "POST", "/v1/traces", otlp_request(8), pb, context=with_cert, host="localhost")[0] == 200
        without = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            call(port, "POST", "/v1/traces", otlp_request(9), pb, context=without, host="localhost")
    finally:
        app.stop()


def test_proxy_over_tls_with_the_openai_client(settings, store, tmp_path):
    """``proxy.tls``: the OpenAI client trusting the test's CA gets in with the proxy's token; one
    that does not trust it, or speaks plaintext, gets nothing through."""
    import httpx
    import openai
    from fake_upstream import FakeUpstream

    from monitor.sidecar.proxy.native import choose_implementation

    pki = make_pki(tmp_path / "pki")
    upstream = FakeUpstream().start()
    settings.proxy.upstream, settings.proxy.port = upstream.url, free_port()
    settings.proxy.auth_token = SecretStr("proxy-token-tls-" + "5e" * 16)
    settings.proxy.tls = settings.proxy.tls.model_copy(update={"cert_file": pki["server"],
                                                               "key_file": pki["server_key"]})
    assert choose_implementation(settings.proxy) == "python"  # the native path speaks plain http
    app = Embedded(settings)
    app.start()
    try:
        base = f"https://localhost:{settings.proxy.port}/v1"
        key = settings.proxy.auth_token.get_secret_value()
        msgs = [{"role": "user", "content": "hi"}]
        good = openai.OpenAI(base_url=base, api_key=key, max_retries=0,
                             http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"]))))
        assert good.chat.completions.create(model="m", messages=msgs).choices[0].message.content == "Hello, world!"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0, http_client=httpx.Client(
                verify=ssl.create_default_context(cafile=str(pki["ca"])))).chat.completions.create(model="m",
                                                                                                  messages=msgs)
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.create(model="m", messages=msgs)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            call(settings.proxy.port, "POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": msgs}),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        assert len(upstream.requests) == 1
    finally:
        app.stop()
        upstream.stop()


# ============================================================================ /metrics


def test_metrics_attacks():
    from monitor.selfmetrics import SelfMetrics

    token = "metrics-token-0123456789abcdef"
    m = SelfMetrics("test")
    port = m.serve("127.0.0.1", 0, token)
    try:
        own = {"Host": f"127.0.0.1:{port}"}
        for path, headers, expected in (
                ("/metrics", own, 401),
                ("/metrics", {**own, "Authorization": "Bearer wrong-token-0123456789ab"}, 401),
                (f"/metrics?token={token}", own, 400),
                (f"/metrics?name[]=x&auth={token}", {**own, "Authorization": f"Bearer {token}"}, 400),
                ("/metrics", {**own, "Authorization": f"Bearer {token}"}, 200),
                ("/healthz", own, 200)):
            status, headers_out, raw = call(port, "GET", path, headers=headers)
            assert status == expected, (path, headers)
            assert token.encode() not in raw
        status, _, raw = call(port, "GET", "/metrics", headers={**own, "Authorization": f"Bearer {token}"})
        assert b'monitor_auth_refused_total{endpoint="metrics",reason="unauthenticated"} 2.0' in raw
    finally:
        m.close()
    open_m = SelfMetrics("test")
    port = open_m.serve("127.0.0.1", 0)
    try:
        assert call(port, "GET", "/metrics", headers={"Host": "evil.example"})[0] == 403
        assert call(port, "GET", "/metrics")[0] == 200
    finally:
        open_m.close()


# ============================================================================ Kafka


def test_kafka_security_settings_reach_kafka_python(tmp_path):
    from monitor.config import KafkaSettings
    from monitor.transport.kafka_common import client_kwargs

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    kw = client_kwargs(KafkaSettings(bootstrap_servers=["k:9093"], security_protocol="SASL_SSL",
                                     sasl_mechanism="SCRAM-SHA-512", sasl_username="monitor",
                                     sasl_password="kafka-pass", ssl_cafile=ca))
    assert kw == {"bootstrap_servers": ["k:9093"], "client_id": "llm-monitor", "security_protocol": "SASL_SSL",
                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "monitor",
                  "sasl_plain_password": "kafka-pass", "ssl_check_hostname": True, "ssl_cafile": str(ca)}
    assert "kafka-pass" not in repr(KafkaSettings(sasl_password="kafka-pass"))
    with pytest.raises(ValueError, match="needs sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="needs sasl_username and sasl_password"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")
    with pytest.raises(ConfigError, match="not a file"):
        client_kwargs(KafkaSettings(bootstrap_servers=["k:9093"], security_protocol="SSL",
                                    ssl_cafile=tmp_path / "missing.pem"))


# ============================================================================ every port of one `monitor up`

_TOKENS = {"receiver": "otlp-token-e2e-" + "1a" * 16, "proxy": "proxy-token-e2e-" + "2b" * 16,
           "dashboard": "dash-token-e2e-" + "3c" * 16, "telemetry": "metrics-token-e2e-" + "4d" * 16}


def _ws_status(url: str, headers: dict | None = None) -> int:
    """The HTTP status of a websocket handshake with Streamlit's stream (101 when it opens)."""
    import asyncio

    import websockets

    async def go() -> int:
        try:
            async with websockets.connect(url, additional_headers=headers or {}, open_timeout=20):
                return 101
        except websockets.exceptions.InvalidStatus as exc:
            return exc.response.status_code

    return asyncio.run(go())


@pytest.mark.slow
def test_a_monitor_on_every_address_refuses_attacks_on_every_port_and_leaks_no_secret(tmp_path):
    """``monitor up`` with the receiver, the proxy, the dashboards and /metrics bound to 0.0.0.0 and
    every token set (the admin endpoint stays on loopback with its token file): each port is sent no
    token, a wrong token, the right token in the query string and a replay, from real clients; the
    right clients get in; afterwards no token is in the log, /metrics, ``monitor status``,
    ``monitor alerts list`` or any stored row."""
    import openai
    from fake_upstream import FakeUpstream

    from monitor.config import load
    from monitor.runtime.admin import admin_token

    upstream = FakeUpstream().start()
    data, log_path = tmp_path / "data", tmp_path / "up.log"
    p = {k: free_port() for k in ("http", "grpc", "admin", "metrics", "proxy", "dash")}
    env = dict(os.environ, MONITOR_CHECKS__ENABLED="false", MONITOR_CHECKS__ADMIN_PORT=str(p["admin"]),
               MONITOR_DASHBOARD__ENABLED="true", MONITOR_DASHBOARD__HOST="0.0.0.0",
               MONITOR_PROXY__HOST="0.0.0.0",
               **{f"MONITOR_{k.upper()}__AUTH_TOKEN": v for k, v in _TOKENS.items()})
    env.pop("MONITOR_CONFIG", None)
    cmd = [*MONITOR, "up", "--data-dir", str(data), "--host", "0.0.0.0", "--metrics-host", "0.0.0.0",
           "--http-port", str(p["http"]), "--grpc-port", str(p["grpc"]), "--metrics-port", str(p["metrics"]),
           "--admin-port", str(p["admin"]), "--upstream", upstream.url, "--proxy-port", str(p["proxy"]),
           "--dashboard-port", str(p["dash"])]
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: "ready; Ctrl-C to stop" in log_path.read_text() or proc.poll() is not None, timeout=180,
                   message="monitor up ready")
        assert proc.poll() is None, log_path.read_text()[-3000:]
        pb = {"Content-Type": "application/x-protobuf"}
        bearer = {k: {"Authorization": f"Bearer {v}"} for k, v in _TOKENS.items()}
        wrong = {"Authorization": "Bearer " + "x" * 48}

        # OTLP/HTTP and gRPC
        body = otlp_request(3)
        otlp = [call(p["http"], "POST", path, body, {**pb, **h})[0] for path, h in (
            ("/v1/traces", {}), ("/v1/traces", wrong), (f"/v1/traces?token={_TOKENS['receiver']}", {}),
            ("/v1/traces", bearer["receiver"]), ("/v1/traces", bearer["receiver"]))]
        assert otlp == [401, 401, 400, 200, 200]  # the last two: the same request replayed
        stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{p['grpc']}"))
        for metadata in ((), (("authorization", "Bearer nope"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(otlp_request(9)), metadata=metadata,
                            timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # the capture proxy, with the OpenAI client and raw requests
        base = f"http://127.0.0.1:{p['proxy']}/v1"
        chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="wrong-key", max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}])
        js = {"Content-Type": "application/json"}
        assert call(p["proxy"], "POST", "/v1/chat/completions", chat, js)[0] == 401
        assert call(p["proxy"], "POST", f"/v1/chat/completions?api_key={_TOKENS['proxy']}", chat, js)[0] == 401
        assert call(p["proxy"], "POST", f"/v1/chat/completions?token={_TOKENS['proxy']}", chat, js)[0] == 401
        assert upstream.requests == []  # nothing refused went upstream
        good = openai.OpenAI(base_url=base, api_key=_TOKENS["proxy"], max_retries=0)
        assert good.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
        replayed = [call(p["proxy"], "POST", "/v1/chat/completions", chat, {**js, **bearer["proxy"]})[0]
                    for _ in range(2)]
        assert replayed == [200, 200] and len(upstream.requests) == 3
        assert all("authorization" not in {k.lower() for k in r["headers"]} for r in upstream.requests)

        # the dashboards: the login form, a bearer token from a reverse proxy, the websocket
        html = {"Accept": "text/html"}
        status, _, body = call(p["dash"], "GET", "/", headers=html)
        assert status == 401 and b'name="token"' in body
        assert call(p["dash"], "GET", "/", headers={**html, **wrong})[0] == 401
        assert call(p["dash"], "GET", f"/?token={_TOKENS['dashboard']}", headers=html)[0] == 400
        assert call(p["dash"], "GET", "/", headers={**html, **bearer["dashboard"]})[0] == 200
        assert call(p["dash"], "GET", "/_stcore/health")[0] == 200  # probes
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert call(p["dash"], "POST", "/_monitor/login", "token=" + "y" * 40, form)[0] == 401
        assert call(p["dash"], "POST", "/_monitor/login", f"token={_TOKENS['dashboard']}",
                    {**form, "Origin": "https://evil.example"})[0] == 403  # a sign-in posted from another site
        status, headers, _ = call(p["dash"], "POST", "/_monitor/login", f"token={_TOKENS['dashboard']}", form)
        assert status == 303 and "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
        assert [call(p["dash"], "GET", "/", headers={**html, **cookie})[0] for _ in range(2)] == [200, 200]
        assert call(p["dash"], "GET", "/", headers={**html, "Cookie": cookie["Cookie"][:-2] + "zz"})[0] == 401
        ws = f"ws://127.0.0.1:{p['dash']}/_stcore/stream"
        assert _ws_status(ws) == 403 and _ws_status(ws, wrong) == 403
        assert _ws_status(f"{ws}?token={_TOKENS['dashboard']}") == 403
        assert _ws_status(ws, bearer["dashboard"]) == 101 and _ws_status(ws, cookie) == 101
        # Streamlit's bundle, answered from memory once fetched (monitor/webui/bundle.py), stays behind the gate
        from streamlit import file_util
        bundle = sorted((Path(file_util.get_static_dir()) / "static" / "js").glob("index.*.js"))[0]
        asset = "/static/js/" + bundle.name
        first, again = (call(p["dash"], "GET", asset, headers=bearer["dashboard"]) for _ in range(2))
        assert first[0] == again[0] == 200 and first[2] == again[2] == bundle.read_bytes()
        assert {k: v for k, v in first[1].items() if k != "date"} == {k: v for k, v in again[1].items() if k != "date"}
        assert call(p["dash"], "GET", asset)[0] == 401 and call(p["dash"], "GET", asset, headers=wrong)[0] == 401

        # /metrics
        metrics = [call(p["metrics"], "GET", path, headers=h)[0] for path, h in (
            ("/metrics", {}), ("/metrics", wrong), (f"/metrics?token={_TOKENS['telemetry']}", {}),
            ("/metrics", bearer["telemetry"]))]
        assert metrics == [401, 401, 400, 200]

        # the admin endpoint (loopback, the token from the file monitor up wrote)
        cli_settings = load(overrides={"checks": {"admin_port": p["admin"]}})
        token = admin_token(cli_settings)
        assert token and all(token != v for v in _TOKENS.values())
        own = {"Host": f"127.0.0.1:{p['admin']}"}
        admin = [call(p["admin"], "GET", path, headers=h)[0] for path, h in (
            ("/admin/baselines", own), ("/admin/baselines", {**own, **wrong}),
            (f"/admin/baselines?token={token}", own),
            ("/admin/baselines", {**own, "Authorization": f"Bearer {token}", "Origin": "https://evil.example"}),
            ("/admin/baselines", {"Host": "rebind.evil.example", "Authorization": f"Bearer {token}"}),
            ("/admin/baselines", {**own, "Authorization": f"Bearer {token}"}))]
        assert admin == [401, 401, 400, 403, 403, 200]

        # the 3 proxied requests and the accepted OTLP span, stored
        wait_until(lambda: _rows_written(p["metrics"], "inference_events") >= 3 + 1, timeout=60,
                   message="the accepted requests stored")
        status = subprocess.run([*MONITOR, "status", "--url", f"http://127.0.0.1:{p['metrics']}/metrics"],
                                capture_output=True, text=True, env=env, timeout=60)
        listed = subprocess.run([*MONITOR, "alerts", "list", "--json"], capture_output=True, text=True, env=env,
                                timeout=60)
        assert status.returncode == 0 and listed.returncode == 0, status.stderr + listed.stderr
        scraped = call(p["metrics"], "GET", "/metrics", headers=bearer["telemetry"])[2].decode()
        refused = {}
        for line in scraped.splitlines():
            if line.startswith("monitor_auth_refused_total{"):
                labels = dict(x.split("=", 1) for x in line[line.index("{") + 1:line.index("}")].split(","))
                key = (labels["endpoint"].strip('"'), labels["reason"].strip('"'))
                refused[key] = refused.get(key, 0) + float(line.rsplit(" ", 1)[1])
        assert refused == {("otlp_http", "unauthenticated"): 2, ("otlp_http", "credential_in_query"): 1,
                           ("otlp_grpc", "unauthenticated"): 2,
                           ("dashboard", "unauthenticated"): 8, ("dashboard", "credential_in_query"): 2,
                           ("dashboard", "browser_origin"): 1,
                           ("metrics", "unauthenticated"): 2, ("metrics", "credential_in_query"): 1,
                           ("admin", "unauthenticated"): 2, ("admin", "credential_in_query"): 1,
                           ("admin", "browser_origin"): 1, ("admin", "bad_host"): 1}, refused
        assert 'monitor_proxy_requests_total{process="proxy",route="-",status="401"} 4.0' in scraped
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        upstream.stop()
    secrets_ = [*_TOKENS.values(), token]
    for where, text in (("log", log_path.read_text()), ("/metrics", scraped), ("monitor status", status.stdout),
                        ("monitor alerts list", listed.stdout)):
        assert not [s for s in secrets_ if s in text], where
    tables = [r[0] for r in chdb_query(data, "SELECT name FROM system.tables WHERE database = 'monitor' "
                                             "AND engine LIKE '%MergeTree'")]
    assert "otel_traces" in tables and "inference_events" in tables
    found = {t: chdb_query(data, f"SELECT count() FROM {t} WHERE " + " OR ".join(
        f"position(toString(tuple(*)), '{s}') > 0" for s in secrets_))[0][0] for t in tables}
    assert {t: n for t, n in found.items() if n} == {}


def _rows_written(port: int, table: str) -> float:
    """``monitor_store_rows_written_total{table}`` from a running monitor's /metrics (with its token)."""
    raw = call(port, "GET", "/metrics", headers={"Authorization": f"Bearer {_TOKENS['telemetry']}"})[2].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in raw.splitlines()
               if line.startswith("monitor_store_rows_written_total{") and f'table="{table}"' in line)
