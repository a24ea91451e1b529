"""A real model server: llama.cpp's own ``llama-server`` with SmolLM2-135M-Instruct (tests/partners.py builds
both once per machine), behind ``monitor up --upstream ... --scrape .../metrics``, driven by the official
``openai`` SDK.

- Through the capture proxy the client gets exactly what a direct call gets (temperature 0, same seed):
  chat and completions, streaming and not. Every request is one ``inference_events`` row with the prompt,
  the completion, the server's usage, the client-seen TTFT and the server's own ``timings``
  (``prompt_ms`` -> prefill, ``predicted_ms`` -> decode).
- The real ``/metrics`` page lands in ``otel_metrics_*``, raw and normalised, and agrees with the usage and
  timings the responses reported.
- The same questions in English and in German: the quality signals see the language change on real
  generated text, and ``monitor check --only feature_drift,semantic_drift`` reports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from datetime import datetime, timezone

import openai
import partners
import pytest
from conftest import MONITOR, chdb_query, free_port, wait_until
from test_otelcol import MonitorProc

from monitor.sidecar.proxy.capture import Capture

pytestmark = [pytest.mark.timeout(600)]  # real generation on 2 busy cores; the partners are prebuilt (tests/run.sh)

MODEL = partners.LlamaServer.ALIAS
SEED = 1234


def _up(tmp_path, llama, *extra_env: tuple[str, str]) -> tuple[MonitorProc, dict]:
    ports = {k: free_port() for k in ("http", "grpc", "metrics", "admin", "proxy")}
    up = MonitorProc(["up", "--data-dir", str(tmp_path / "data"), "--http-port", str(ports["http"]), "--grpc-port",
                      str(ports["grpc"]), "--metrics-port", str(ports["metrics"]), "--admin-port", str(ports["admin"]),
                      "--no-dashboard", "--upstream", llama.url, "--proxy-port", str(ports["proxy"]),
                      "--scrape", f"{llama.url}/metrics"], tmp_path / "up.log",
                     env={"MONITOR_SCRAPE__INTERVAL_S": "0.5", "MONITOR_CHECKS__ADMIN_PORT": str(ports["admin"]),
                          **dict(extra_env)})
    return up, ports


def _clients(llama, ports) -> tuple[openai.OpenAI, openai.OpenAI]:
    via = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['proxy']}/v1", api_key="x", max_retries=0, timeout=120)
    direct = openai.OpenAI(base_url=f"{llama.url}/v1", api_key="x", max_retries=0, timeout=120)
    return via, direct


def _llama_counters(llama) -> dict[str, float]:
    out = {}
    for line in llama.metrics().splitlines():
        if line.startswith("llamacpp:") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _chunks(stream) -> tuple[list[str], str | None, dict | None, dict | None]:
    """(content deltas, finish reason, usage, timings) of a streamed chat or completion."""
    deltas, finish, usage, timings = [], None, None, None
    for c in stream:
        for ch in c.choices:
            text = ch.delta.content if hasattr(ch, "delta") else ch.text
            if text:
                deltas.append(text)
            finish = ch.finish_reason or finish
        if c.usage is not None:
            usage = c.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
        timings = (c.model_extra or {}).get("timings") or timings
    return deltas, finish, usage, timings


def _usage(resp) -> dict:
    return resp.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})


def test_openai_sdk_through_monitor_up_to_llama_server(llama_server, tmp_path):
    llama = llama_server
    up, ports = _up(tmp_path, llama)
    via, direct = _clients(llama, ports)
    before = _llama_counters(llama)
    calls: list[dict] = []  # what each proxied request should have left in inference_events
    direct_usage = []
    t0 = time.monotonic()
    try:
        msgs = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Name three primary colors and say why they are called primary."}]
        kw = dict(model=MODEL, messages=msgs, temperature=0, seed=SEED, max_tokens=40)

        # chat, not streamed: the body (with llama.cpp's timings) is the client's
        ref = direct.chat.completions.create(**kw)
        got = via.chat.completions.create(**kw)
        assert got.choices[0].message.content == ref.choices[0].message.content != ""
        assert got.choices[0].finish_reason == ref.choices[0].finish_reason
        assert _usage(got) == _usage(ref)
        direct_usage.append(_usage(ref))
        calls.append({"op": "chat", "stream": False, "prompt": msgs[-1]["content"], "completion":
                      got.choices[0].message.content, "usage": _usage(got), "timings": got.model_extra["timings"],
                      "finish": got.choices[0].finish_reason})

        # chat, streamed, no usage asked: the proxy asks for it and strips that chunk (the client sees none)
        ref_deltas, ref_finish, ref_usage, _ = _chunks(direct.chat.completions.create(**kw, stream=True))
        deltas, finish, usage, timings = _chunks(via.chat.completions.create(**kw, stream=True))
        assert deltas == ref_deltas and "".join(deltas) == ref.choices[0].message.content
        assert finish == ref_finish and usage is None and ref_usage is None
        calls.append({"op": "chat", "stream": True, "prompt": msgs[-1]["content"], "completion": "".join(deltas),
                      "usage": _usage(ref), "timings": None, "finish": finish})

        # chat, streamed, usage asked by the client: it gets the server's usage chunk, with the timings
        so = {"stream_options": {"include_usage": True}}
        ref_deltas, _, ref_usage, _ = _chunks(direct.chat.completions.create(**kw, stream=True, **so))
        deltas, finish, usage, timings = _chunks(via.chat.completions.create(**kw, stream=True, **so))
        assert deltas == ref_deltas and usage == ref_usage == _usage(ref) and timings
        direct_usage.append(ref_usage)
        calls.append({"op": "chat", "stream": True, "prompt": msgs[-1]["content"], "completion": "".join(deltas),
                      "usage": usage, "timings": timings, "finish": finish})

        # completions, not streamed and streamed
        ckw = dict(model=MODEL, prompt="The three laws of motion are", temperature=0, seed=SEED, max_tokens=32)
        cref = direct.completions.create(**ckw)
        cgot = via.completions.create(**ckw)
        assert cgot.choices[0].text == cref.choices[0].text != ""
        assert _usage(cgot) == _usage(cref)
        direct_usage.append(_usage(cref))
        calls.append({"op": "text_completion", "stream": False, "prompt": ckw["prompt"],
                      "completion": cgot.choices[0].text, "usage": _usage(cgot),
                      "timings": cgot.model_extra.get("timings"), "finish": cgot.choices[0].finish_reason})
        ref_deltas, _, _, _ = _chunks(direct.completions.create(**ckw, stream=True))
        deltas, finish, usage, timings = _chunks(via.completions.create(**ckw, stream=True, **so))
        assert deltas == ref_deltas and "".join(deltas) == cref.choices[0].text
        assert usage == _usage(cref)
        calls.append({"op": "text_completion", "stream": True, "prompt": ckw["prompt"], "completion": "".join(deltas),
                      "usage": usage, "timings": timings, "finish": finish})

        # two at once on one slot (-np 1): the second waits; the scrape sees one processing, one deferred
        long_kw = dict(model=MODEL, temperature=0, seed=SEED, max_tokens=160,
                       messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(via.chat.completions.create(**long_kw)))
                   for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join(180)
        assert len(results) == 2 and results[0].choices[0].message.content == results[1].choices[0].message.content
        for r in results:
            calls.append({"op": "chat", "stream": False, "prompt": long_kw["messages"][0]["content"],
                          "completion": r.choices[0].message.content, "usage": _usage(r),
                          "timings": r.model_extra["timings"], "finish": r.choices[0].finish_reason})

        after = _llama_counters(llama)
        scrape_wanted = after["llamacpp:tokens_predicted_total"]
        # the page as it is now (nothing else runs on this server meanwhile) reaches the store
        wait_until(lambda: up.metric(ports["metrics"], "monitor_store_rows_written_total",
                                     table="inference_events") >= len(calls), timeout=60, message="the events stored")
        time.sleep(1.5)  # three scrapes of the final page
        elapsed = time.monotonic() - t0
    finally:
        rc = up.stop()
    assert rc == 0, up.text()[-3000:]
    assert "engine: llamacpp" in up.text()  # the scraper recognised the page

    data = tmp_path / "data"
    rows = [dict(zip(("operation", "stream", "prompt", "completion", "input_tokens", "output_tokens", "ttft_ms",
                      "latency_ms", "prefill_ms", "decode_ms", "inference_ms", "finish_reason", "model", "status",
                      "itl_ms"), r))
            for r in chdb_query(data, "SELECT operation, attributes['gen_ai.request.stream'], prompt, completion, "
                                      "input_tokens, output_tokens, ttft_ms, latency_ms, prefill_ms, decode_ms, "
                                      "inference_ms, finish_reason, model, status_code, itl_ms "
                                      "FROM inference_events ORDER BY timestamp")]
    assert len(rows) == len(calls), rows
    for call, row in zip(calls, rows):  # in request order (the two concurrent ones are alike)
        assert row["operation"] == call["op"] and row["stream"] == str(call["stream"]).lower()
        assert row["prompt"] == call["prompt"] and row["completion"] == call["completion"]
        assert (row["input_tokens"], row["output_tokens"]) == (call["usage"]["prompt_tokens"],
                                                               call["usage"]["completion_tokens"])
        assert row["finish_reason"] == call["finish"] and row["model"] == MODEL and row["status"] != "Error"
        # the server's own timings, as prefill / decode / inference (ms)
        assert row["prefill_ms"] is not None and row["decode_ms"] is not None, row
        if call["timings"]:
            t = call["timings"]
            assert row["prefill_ms"] == pytest.approx(t["prompt_ms"], rel=1e-9, abs=1e-6)
            assert row["decode_ms"] == pytest.approx(t["predicted_ms"], rel=1e-9, abs=1e-6)
            assert row["inference_ms"] == pytest.approx(t["prompt_ms"] + t["predicted_ms"], rel=1e-9, abs=1e-6)
        assert 0 < row["prefill_ms"] + row["decode_ms"] <= row["latency_ms"]
        if call["stream"]:
            # client-seen TTFT: after the server's prefill, before the end
            assert row["prefill_ms"] <= row["ttft_ms"] < row["latency_ms"], row
            # time per output token: None only where every token reached the proxy in one read (once,
            # under the full suite, a short stream did); never 0
            assert row["itl_ms"] is None or row["itl_ms"] > 0, (row, call)
        else:
            assert row["ttft_ms"] is None
    assert any(r["itl_ms"] for r in rows if r["stream"] == "true" and r["output_tokens"] > 20), rows
    # the first of the two concurrent requests ran alone; the second waited for the slot
    waited = [r for r in rows if r["prompt"].startswith("Write a long story")]
    assert max(r["latency_ms"] for r in waited) > min(r["latency_ms"] for r in waited) + 0.5 * min(
        r["decode_ms"] for r in waited)

    # the real /metrics page, raw and normalised, agrees with what the responses said
    sums = {(r[0], r[1]): r[2] for r in chdb_query(
        data, "SELECT MetricName, Attributes['gen_ai.token.type'], max(Value) FROM otel_metrics_sum "
              "GROUP BY MetricName, Attributes['gen_ai.token.type']")}
    assert sums[("monitor.server.tokens", "output")] == scrape_wanted == after["llamacpp:tokens_predicted_total"]
    assert sums[("monitor.server.tokens", "input")] == after["llamacpp:prompt_tokens_total"]
    assert sums[("llamacpp:tokens_predicted_total", "")] == after["llamacpp:tokens_predicted_total"]
    produced = sum(c["usage"]["completion_tokens"] for c in calls) + sum(u["completion_tokens"] for u in direct_usage)
    produced += calls[1]["usage"]["completion_tokens"] + calls[4]["usage"]["completion_tokens"]  # direct streams
    assert after["llamacpp:tokens_predicted_total"] - before.get("llamacpp:tokens_predicted_total", 0) == produced
    seconds = {k: sums[(k, "")] for k in ("llamacpp:prompt_seconds_total", "llamacpp:tokens_predicted_seconds_total")}
    assert seconds["llamacpp:prompt_seconds_total"] == pytest.approx(after["llamacpp:prompt_seconds_total"])
    assert seconds["llamacpp:tokens_predicted_seconds_total"] == pytest.approx(
        after["llamacpp:tokens_predicted_seconds_total"])
    gauges = {(r[0], r[1]): r[2:] for r in chdb_query(
        data, "SELECT MetricName, Attributes['engine'], min(Value), max(Value), count() FROM otel_metrics_gauge "
              "WHERE MetricName IN ('monitor.server.requests.running', 'monitor.server.requests.waiting', "
              "'monitor.server.tokens_per_second') GROUP BY MetricName, Attributes['engine']")}
    assert gauges[("monitor.server.requests.running", "llamacpp")][:2] == [0, 1]
    assert gauges[("monitor.server.requests.waiting", "llamacpp")][:2] == [0, 1]
    assert gauges[("monitor.server.tokens_per_second", "llamacpp")][1] > 0
    print(f"\n[llama.cpp] {len(calls)} proxied + {len(direct_usage) + 3} direct requests, scrape checked, "
          f"in {elapsed:.1f}s")


QUESTIONS = [
    ("What is the capital of France?", "Was ist die Hauptstadt von Frankreich?"),
    ("How do I boil an egg?", "Wie koche ich ein Ei?"),
    ("Why is the sky blue?", "Warum ist der Himmel blau?"),
    ("What do cats like to eat?", "Was fressen Katzen gern?"),
    ("How many days does a week have?", "Wie viele Tage hat eine Woche?"),
    ("What is the weather like in winter?", "Wie ist das Wetter im Winter?"),
    ("Tell me about the moon.", "Erzähl mir etwas über den Mond."),
    ("What is a good breakfast?", "Was ist ein gutes Frühstück?"),
    ("How does a bicycle work?", "Wie funktioniert ein Fahrrad?"),
    ("Why do we need sleep?", "Warum brauchen wir Schlaf?"),
    ("What is the largest ocean?", "Was ist der größte Ozean?"),
    ("How do plants grow?", "Wie wachsen Pflanzen?"),
    ("What is music?", "Was ist Musik?"),
    ("Where do penguins live?", "Wo leben Pinguine?"),
    ("How do I learn to swim?", "Wie lerne ich schwimmen?"),
    ("What is the sun made of?", "Woraus besteht die Sonne?"),
    ("Why do leaves change color in autumn?", "Warum verfärben sich die Blätter im Herbst?"),
    ("What is a computer?", "Was ist ein Computer?"),
    ("How do birds fly?", "Wie fliegen Vögel?"),
    ("What is bread made from?", "Woraus wird Brot gemacht?"),
    ("How tall is a giraffe?", "Wie groß ist eine Giraffe?"),
    ("What is the fastest animal?", "Was ist das schnellste Tier?"),
    ("Why is water wet?", "Warum ist Wasser nass?"),
    ("How do trains work?", "Wie funktionieren Züge?"),
]
SYSTEM = {"en": "You are a helpful assistant. Answer in one or two sentences.",
          "de": "Du bist ein hilfreicher Assistent. Antworte auf Deutsch in ein oder zwei Sätzen."}


def test_english_then_german_changes_the_completion_language_and_the_checks_see_it(llama_server, tmp_path):
    llama = llama_server
    up, ports = _up(tmp_path, llama, ("MONITOR_CHECKS__MIN_SAMPLES", "20"),
                    ("MONITOR_CHECKS__SEMANTIC__PERMUTATIONS", "500"))
    via, _ = _clients(llama, ports)
    t0 = time.monotonic()
    phases: dict[str, tuple[datetime, datetime]] = {}
    check = None
    try:
        for lang, idx in (("en", 0), ("de", 1)):
            start = datetime.now(timezone.utc)
            for q in QUESTIONS:
                via.chat.completions.create(model=MODEL, temperature=0, seed=SEED, max_tokens=32, messages=[
                    {"role": "system", "content": SYSTEM[lang]}, {"role": "user", "content": q[idx]}])
            phases[lang] = (start, datetime.now(timezone.utc))
            time.sleep(1.1)  # the windows below do not overlap
        wait_until(lambda: up.metric(ports["metrics"], "monitor_store_rows_written_total",
                                     table="inference_events") >= 2 * len(QUESTIONS), timeout=60,
                   message="the events stored")
        traffic_s = time.monotonic() - t0
        # pin the English phase as the baseline; the current window holds the German phase only
        en0, en1 = phases["en"]
        env = {"MONITOR_CHECKS__ADMIN_PORT": str(ports["admin"]), "MONITOR_CHECKS__MIN_SAMPLES": "20",
               "MONITOR_CHECKS__SEMANTIC__PERMUTATIONS": "500"}
        env = dict(os.environ, **env)
        pin = subprocess.run([*MONITOR, "baseline", "pin", "--model", MODEL, "--from", en0.isoformat(),
                              "--to", en1.isoformat()], capture_output=True, text=True, env=env, timeout=60)
        assert pin.returncode == 0, pin.stdout + pin.stderr
        window = f"{(datetime.now(timezone.utc) - phases['de'][0]).total_seconds() + 0.5:.1f}s"
        c0 = time.monotonic()
        check = subprocess.run([*MONITOR, "check", "--model", MODEL, "--window", window, "--reference", "baseline",
                                "--only", "feature_drift,semantic_drift", "--json"],
                               capture_output=True, text=True, env=env, timeout=420)
        check_s = time.monotonic() - c0
    finally:
        rc = up.stop()
    assert rc == 0, up.text()[-3000:]

    data = tmp_path / "data"
    langs = {(r[0], r[1]): r[2] for r in chdb_query(
        data, "SELECT if(positionUTF8(system_prompt, 'Deutsch') > 0, 'de', 'en') AS phase, completion_language, "
              "count() FROM inference_events GROUP BY phase, completion_language")}
    prompts = dict(((r[0], r[1]), r[2]) for r in chdb_query(
        data, "SELECT if(positionUTF8(system_prompt, 'Deutsch') > 0, 'de', 'en') AS phase, prompt_language, "
              "count() FROM inference_events GROUP BY phase, prompt_language"))
    print(f"\n[llama.cpp languages] completions {langs}; prompts {prompts}; traffic {traffic_s:.0f}s, "
          f"check {check_s:.0f}s")
    n = len(QUESTIONS)
    assert sum(v for (p, _), v in langs.items() if p == "en") == n and sum(
        v for (p, _), v in langs.items() if p == "de") == n
    # real generated text: the English phase answers in English, the German phase mostly in German
    assert langs.get(("en", "en"), 0) >= 0.8 * n
    assert langs.get(("de", "de"), 0) >= 0.5 * n > langs.get(("en", "de"), 0)
    assert prompts.get(("de", "de"), 0) >= 0.8 * n and prompts.get(("en", "en"), 0) >= 0.8 * n

    assert check.returncode == 1, check.stdout[-4000:] + check.stderr[-3000:]  # a check failed
    report = json.loads(check.stdout)
    (scope,) = report["scopes"]
    assert scope["model"] == MODEL and scope["reference_kind"] == "baseline"
    res = {(r["check"], r["metric"]): r for r in scope["results"]}
    assert res[("feature_drift", "prompt_language")]["status"] == "fail"
    assert res[("feature_drift", "completion_language")]["status"] == "fail"
    assert res[("semantic_drift", "prompt")]["status"] == "fail"
    assert res[("semantic_drift", "completion")]["status"] == "fail"


def test_llama_server_timings_become_engine_attributes():
    """The parser alone, on the shape llama-server sends (the last chunk of a stream it was asked usage for)."""
    cap = Capture("openai", "chat")
    cap.read_request(json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
                     .encode())
    assert cap.upstream_body(b"{}", ask_for_usage=True) != b"{}" and cap.usage_requested
    last = {"choices": [], "created": 1, "id": "chatcmpl-x", "model": MODEL, "object": "chat.completion.chunk",
            "usage": {"completion_tokens": 7, "prompt_tokens": 11, "total_tokens": 18},
            "timings": {"cache_n": 0, "prompt_n": 11, "prompt_ms": 20.5, "prompt_per_token_ms": 1.86,
                        "prompt_per_second": 536.6, "predicted_n": 7, "predicted_ms": 48.25,
                        "predicted_per_token_ms": 6.89, "predicted_per_second": 145.1}}
    stream = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\n'
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
              b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
    to_client = cap.feed(stream)
    assert b"timings" not in to_client and b"[DONE]" in to_client  # the usage chunk was the proxy's to take
    attrs = cap.response_attributes()
    assert attrs["gen_ai.latency.time_in_model_prefill"] == pytest.approx(0.0205)
    assert attrs["gen_ai.latency.time_in_model_decode"] == pytest.approx(0.04825)
    assert attrs["gen_ai.latency.time_in_model_inference"] == pytest.approx(0.06875)
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (11, 7)
    # nonsense is not a timing
    bad = Capture("openai", "chat")
    bad.read_response(json.dumps({"choices": [], "timings": {"prompt_ms": -1, "predicted_ms": "x"}}).encode())
    assert not any(k.startswith("gen_ai.latency") for k in bad.response_attributes())


def test_the_llama_server_fixture_serves_health_and_metrics(llama_server):
    with urllib.request.urlopen(llama_server.url + "/health", timeout=10) as r:
        assert r.status == 200
    assert "llamacpp:prompt_tokens_total" in llama_server.metrics()
