"""What the capture proxy learns from one request and its response. Pure: no I/O.

:class:`Capture` is fed the request body, then the response (whole, or chunk
by chunk as it streams) and the times at which content reached the client;
:meth:`Capture.attributes` turns it into GenAI span attributes. It
understands the OpenAI API (chat, completions, embeddings; SSE streaming
with or without a usage chunk) and Ollama's native ``/api/chat`` and
``/api/generate`` (NDJSON streaming, durations in nanoseconds). Engine-side
timings that a server puts in its own response become the ``gen_ai.latency.*``
attributes a vLLM engine span carries: Ollama's ``*_duration`` fields and
llama.cpp ``llama-server``'s ``timings`` object (``prompt_ms`` -> prefill,
``predicted_ms`` -> decode; in the last stream chunk or the whole response).

Client-seen timings are recorded under ``monitor.client.*`` (seconds): the
proxy measures them when bytes leave towards the client, so they include
everything between the client and the model (queueing, network, the engine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Capture", "ROUTES", "operation_of", "truncate"]

ROUTES = {
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/completions": ("openai", "text_completion"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/api/chat": ("ollama", "chat"),
    "/api/generate": ("ollama", "text_completion"),
    "/api/embed": ("ollama", "embeddings"),
    "/api/embeddings": ("ollama", "embeddings"),
}
"""Captured routes: path -> (API dialect, gen_ai.operation.name). Other paths pass through untouched."""


def _loads(data: bytes) -> Any:
    """JSON text as orjson reads it, or as the json module does where orjson refuses it: ``1e400``,
    ``NaN``, ``Infinity`` (Python's own ``json.dumps`` writes the last two). One such number must not
    cost a request or an answer everything else it holds. ValueError when neither reads it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError as exc:
            raise ValueError("JSON nested too deep") from exc


TRUNCATION_MARKER = "…[truncated {n} bytes]"


def operation_of(path: str) -> tuple[str, str] | None:
    return ROUTES.get(path.rstrip("/") or path)


def truncate(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` of UTF-8 and say how much was cut, visibly."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    marker_room = 40
    keep = raw[: max(0, max_bytes - marker_room)].decode("utf-8", errors="ignore")
    return keep + TRUNCATION_MARKER.format(n=len(raw) - len(keep.encode("utf-8")))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


MAX_CHOICE_INDEX = 1024
"""Choices beyond this index are not read (the native digest leaves such a stream to the replay, too)."""


def _count(v: Any) -> int | None:
    """A token count or index as a server sent it (``int()`` of it), None when it is not one."""
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def _ms(v: Any) -> float | None:
    """A duration in ms as a server reported it: a finite number >= 0, else None (not reported)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e12:
        return None  # NaN fails both comparisons
    return float(v)


@dataclass
class Capture:
    api: str
    """``openai`` or ``ollama``."""
    operation: str
    request: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    status: int | None = None
    model: str = ""
    response_id: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    """OpenAI ``usage.prompt_tokens_details.cached_tokens``: input served from the prompt cache."""
    chunks: int = 0
    """Content-bearing chunks seen in a stream (one per token on vLLM, OpenAI, Ollama)."""
    output: list[str] = field(default_factory=list)
    """Output text per choice index."""
    roles: list[str] = field(default_factory=list)
    ollama_durations: dict[str, int] = field(default_factory=dict)
    engine: dict[str, float] = field(default_factory=dict)
    """Engine-side timings (seconds) reported in the response itself (Ollama, llama.cpp ``timings``)."""
    error_body: str = ""
    usage_requested: bool = False
    """The proxy added ``stream_options.include_usage``: the usage chunk is for us, not the client."""
    _buffer: bytes = b""

    # -- request ---------------------------------------------------------------------
    def read_request(self, body: bytes) -> None:
        try:
            req = _loads(body) if body else {}
        except ValueError:
            req = {}
        self.request = req if isinstance(req, dict) else {}
        self.stream = bool(self.request.get("stream", self.api == "ollama" and self.operation != "embeddings"))
        self.model = str(self.request.get("model") or "")

    def upstream_body(self, body: bytes, ask_for_usage: bool) -> bytes:
        """The body to send upstream: unchanged, except that an OpenAI stream without
        ``include_usage`` asks for the usage chunk (the proxy strips it before the client sees it)."""
        if (not ask_for_usage or self.api != "openai" or not self.stream or self.operation == "embeddings"
                or not self.request):
            return body
        opts = self.request.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            return body
        patched = dict(self.request)
        patched["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
        self.usage_requested = True
        return json.dumps(patched, separators=(",", ":")).encode()

    def input_messages(self) -> list[dict[str, Any]]:
        """The request's content in GenAI-convention shape."""
        r = self.request
        if self.operation == "chat":
            out = []
            for m in r.get("messages") or []:
                if not isinstance(m, dict):
                    continue
                msg: dict[str, Any] = {"role": m.get("role", "user"),
                                       "parts": [{"type": "text", "content": _text_of(m.get("content"))}]}
                if m.get("tool_calls"):
                    msg["parts"] += [{"type": "tool_call", **tc} for tc in m["tool_calls"] if isinstance(tc, dict)]
                out.append(msg)
            if self.api == "ollama" and r.get("system"):
                out.insert(0, {"role": "system", "parts": [{"type": "text", "content": str(r["system"])}]})
            return out
        prompt = r.get("prompt") if self.operation == "text_completion" else r.get("input")
        if isinstance(prompt, list):
            prompt = "\n".join(p if isinstance(p, str) else json.dumps(p) for p in prompt)
        msgs = []
        if self.api == "ollama" and r.get("system"):
            msgs.append({"role": "system", "parts": [{"type": "text", "content": str(r["system"])}]})
        if prompt is not None:
            msgs.append({"role": "user", "parts": [{"type": "text", "content": str(prompt)}]})
        return msgs

    # -- response --------------------------------------------------------------------
    def read_response(self, body: bytes) -> None:
        """A whole (non-streamed) response body."""
        try:
            data = _loads(body)
        except ValueError:
            self.error_body = body[:2000].decode("utf-8", errors="replace")
            return
        if not isinstance(data, dict):
            return
        if self.api == "ollama":
            self._ollama_object(data)
        else:
            self._openai_object(data)

    def feed(self, chunk: bytes) -> bytes:
        """One streamed chunk as it came from upstream; returns the bytes to send to the client:
        the same bytes, except that a usage chunk the proxy asked for on the client's behalf is
        left out (then events are re-framed with ``\n\n``, which SSE treats the same)."""
        buf = self._buffer + chunk if self._buffer else chunk
        out = bytearray() if self.usage_requested else None
        pos = 0
        if self.api == "ollama":
            while (i := buf.find(b"\n", pos)) >= 0:
                self._event(buf[pos:i])
                pos = i + 1
        else:
            crlf = b"\r" in buf
            while True:
                i = buf.find(b"\n\n", pos)
                sep = 2
                if crlf:
                    j = buf.find(b"\r\n\r\n", pos)
                    if j >= 0 and (i < 0 or j < i):
                        i, sep = j, 4
                if i < 0:
                    break
                event = buf[pos:i]
                keep = self._event(event)
                if out is not None and keep:
                    out += event + b"\n\n"
                pos = i + sep
        self._buffer = buf[pos:]
        return bytes(out) if out is not None else chunk

    def flush(self) -> bytes:
        """What is left of the stream when it ends without a final separator."""
        rest, self._buffer = self._buffer, b""
        if rest.strip() and self._event(rest):
            return rest if self.usage_requested else b""
        return b""

    def _event(self, event: bytes) -> bool:
        """Parse one SSE event / NDJSON line; False if it must not reach the client."""
        if self.api == "ollama":
            line = event.strip()
            if line:
                try:
                    obj = _loads(line)
                except ValueError:
                    return True
                if isinstance(obj, dict):
                    self._ollama_object(obj)
            return True
        if event.startswith(b"data:") and b"\n" not in event:  # the common case: one data line
            data = event[5:].strip()
        else:
            data = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data or data == b"[DONE]":
            return True
        try:
            obj = _loads(data)
        except ValueError:
            return True
        if not isinstance(obj, dict):
            return True
        if "error" in obj and not obj.get("choices"):
            self.error_body = json.dumps(obj["error"])[:2000]
        self._openai_object(obj)
        if self.usage_requested and obj.get("usage") and not obj.get("choices"):
            return False
        return True

    def _openai_object(self, data: dict[str, Any]) -> None:
        self.model = str(data.get("model") or self.model)
        self.response_id = str(data.get("id") or self.response_id)
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            idx = _count(choice.get("index") or 0)
            if idx is None or not 0 <= idx <= MAX_CHOICE_INDEX:
                continue  # not a choice index (a hostile one must not grow the list without bound)
            while len(self.output) <= idx:
                self.output.append("")
                self.roles.append("assistant")
            delta = choice.get("delta")
            if isinstance(delta, dict):  # streamed chat chunk
                text = _text_of(delta.get("content")) or ""
                if delta.get("role"):
                    self.roles[idx] = delta["role"]
            elif isinstance(choice.get("message"), dict):  # whole chat response
                text = _text_of(choice["message"].get("content")) or ""
                self.roles[idx] = choice["message"].get("role") or "assistant"
            else:  # completions
                text = choice.get("text") or ""
                if not isinstance(text, str):
                    text = ""
            if text:
                self.output[idx] += text
                if self.stream:
                    self.chunks += 1
            if choice.get("finish_reason"):
                self.finish_reasons.append(str(choice["finish_reason"]))
        if data.get("object") == "list" and isinstance(data.get("data"), list):  # embeddings
            self.output = []
        timings = data.get("timings")
        if isinstance(timings, dict):
            self._llamacpp_timings(timings)

    def _usage(self, usage: dict[str, Any]) -> None:
        if (n := _count(usage.get("prompt_tokens"))) is not None:
            self.input_tokens = n
        if (n := _count(usage.get("completion_tokens"))) is not None:
            self.output_tokens = n
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            self.cached_tokens = int(details["cached_tokens"])

    def apply_digest(self, d: dict[str, Any]) -> list[int]:
        """What a replay of an OpenAI SSE or Ollama NDJSON stream would have left, from the native
        proxy's reassembly of it (:attr:`monitor.sidecar.proxy.record.CaptureRecord.digest`); returns the chunk times (ns) that
        brought content, as the replay would have timed them (none when the request was not a stream)."""
        if d.get("model"):
            self.model = str(d["model"])
        if d.get("id"):
            self.response_id = str(d["id"])
        self.output, self.roles = [str(t) for t in d["output"]], [str(r) for r in d["roles"]]
        self.finish_reasons += [str(f) for f in d["finish"]]
        for usage in d["usage"]:
            if isinstance(usage, dict):
                self._usage(usage)
        for timings in d["timings"]:
            if isinstance(timings, dict):
                self._llamacpp_timings(timings)
        for done in d.get("done", ()):  # Ollama's last object (its fields the replay reads)
            if isinstance(done, dict):
                self._ollama_done(done)
        if not self.stream:
            return []
        self.chunks += int(d["pieces"])
        return [int(t) for t in d["content_t"]]

    def _llamacpp_timings(self, t: dict[str, Any]) -> None:
        """llama-server's ``timings`` (milliseconds): ``prompt_ms`` is the prompt's evaluation (prefill,
        only the tokens not already in its prompt cache), ``predicted_ms`` the generation (decode)."""
        prompt, predicted = _ms(t.get("prompt_ms")), _ms(t.get("predicted_ms"))
        if prompt is not None:
            self.engine["gen_ai.latency.time_in_model_prefill"] = prompt / 1e3
        if predicted is not None:
            self.engine["gen_ai.latency.time_in_model_decode"] = predicted / 1e3
        if prompt is not None and predicted is not None:
            self.engine["gen_ai.latency.time_in_model_inference"] = (prompt + predicted) / 1e3

    def _ollama_object(self, data: dict[str, Any]) -> None:
        self.model = str(data.get("model") or self.model)
        msg = data.get("message")
        text = (msg.get("content") if isinstance(msg, dict) else data.get("response")) or ""
        if text and isinstance(text, str):
            if not self.output:
                self.output.append("")
                self.roles.append("assistant")
            self.output[0] += text
            if self.stream:
                self.chunks += 1
        if data.get("done"):
            self._ollama_done(data)

    def _ollama_done(self, data: dict[str, Any]) -> None:
        """The last object of an Ollama answer: why it ended, token counts, durations (ns)."""
        if data.get("done_reason"):
            self.finish_reasons.append(str(data["done_reason"]))
        if (n := _count(data.get("prompt_eval_count"))) is not None:
            self.input_tokens = n
        if (n := _count(data.get("eval_count"))) is not None:
            self.output_tokens = n
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            if (n := _count(data.get(key))) is not None:
                self.ollama_durations[key] = n
        d = self.ollama_durations
        if "total_duration" in d:
            self.engine["gen_ai.latency.e2e"] = d["total_duration"] / 1e9
        if "prompt_eval_duration" in d:
            self.engine["gen_ai.latency.time_in_model_prefill"] = d["prompt_eval_duration"] / 1e9
        if "eval_duration" in d:
            self.engine["gen_ai.latency.time_in_model_decode"] = d["eval_duration"] / 1e9
        if "prompt_eval_duration" in d and "eval_duration" in d:
            self.engine["gen_ai.latency.time_in_model_inference"] = (
                d["prompt_eval_duration"] + d["eval_duration"]) / 1e9

    def output_messages(self) -> list[dict[str, Any]]:
        if self.operation == "embeddings":
            return []
        reasons = self.finish_reasons
        return [{"role": self.roles[i] if i < len(self.roles) else "assistant",
                 "parts": [{"type": "text", "content": text}],
                 **({"finish_reason": reasons[i]} if i < len(reasons) else {})}
                for i, text in enumerate(self.output)]

    # -- span attributes --------------------------------------------------------------
    def request_attributes(self) -> dict[str, Any]:
        r = self.request
        opts = r.get("options") if self.api == "ollama" and isinstance(r.get("options"), dict) else r
        attrs: dict[str, Any] = {"gen_ai.operation.name": self.operation}
        if self.model:
            attrs["gen_ai.request.model"] = self.model
        for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                          ("seed", "seed"), ("frequency_penalty", "frequency_penalty"),
                          ("presence_penalty", "presence_penalty")):
            v = opts.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[f"gen_ai.request.{name}"] = v
        max_tokens = r.get("max_completion_tokens", r.get("max_tokens", opts.get("num_predict")))
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
            attrs["gen_ai.request.max_tokens"] = max_tokens
        stop = r.get("stop", opts.get("stop"))
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            attrs["gen_ai.request.stop_sequences"] = stop
        attrs["gen_ai.request.stream"] = self.stream
        # Structured output: OpenAI response_format {type: json_object | json_schema}, Ollama format "json" | schema
        fmt = r.get("response_format") if self.api == "openai" else r.get("format")
        if isinstance(fmt, dict) and (fmt.get("type") in ("json_object", "json_schema") or self.api == "ollama"):
            attrs["gen_ai.output.type"] = "json"
            attrs["monitor.request.response_format"] = json.dumps(
                fmt if self.api == "openai" else {"type": "json_schema", "json_schema": {"schema": fmt}},
                separators=(",", ":"))
        elif fmt == "json":
            attrs["gen_ai.output.type"] = "json"
        return attrs

    def response_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.model:
            attrs["gen_ai.response.model"] = self.model
        if self.response_id:
            attrs["gen_ai.response.id"] = self.response_id
        if self.finish_reasons:
            attrs["gen_ai.response.finish_reasons"] = list(self.finish_reasons)
        if self.input_tokens is not None:
            attrs["gen_ai.usage.input_tokens"] = self.input_tokens
        out = self.output_tokens
        if out is None and self.stream and self.chunks:
            out = self.chunks  # no usage from the server: one streamed chunk per token
            attrs["monitor.usage.output_tokens_counted"] = True
        if out is not None:
            attrs["gen_ai.usage.output_tokens"] = out
        if self.cached_tokens is not None:
            attrs["gen_ai.usage.cache_read.input_tokens"] = self.cached_tokens
        attrs.update(self.engine)
        return attrs
