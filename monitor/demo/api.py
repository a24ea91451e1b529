"""The reference server's OpenAI-compatible HTTP API (aiohttp): request parsing, streaming
responses in OpenAI's shapes, /metrics, /health and /admin/slowdown."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST
from monitor.demo.model import CHAT_STOP, DemoModel, chat_prompt, message_text

from monitor.demo.worker import DONE, DEFAULT_BLOCKED_TOPICS, REFUSAL, DEFAULT_MAX_TOKENS, MAX_TOKENS_CAP, ModelWorker, Work, RequestError, log

__all__ = ["create_app", "describe", "WORKER"]


# -- request parsing ------------------------------------------------------------------------------

def _num(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RequestError(f"'{key}' must be a number", key)
    if v > hi or v < lo or (lo_open and v == lo):
        raise RequestError(f"'{key}' must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {v}", key)
    return float(v)


def _int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"'{key}' must be an integer", key)
    return v


def _common(worker: ModelWorker, body: dict, kind: str, request_id: str) -> Work:
    model = body.get("model")
    if model is not None and model != worker.model_name:
        raise RequestError(f"The model `{model}` does not exist.", "model", status=404, code="model_not_found")
    max_tokens = _int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise RequestError(f"'max_tokens' must be at least 1, got {max_tokens}", "max_tokens")
    n = _int(body, "n")
    if n is not None and n != 1:
        raise RequestError("Only n=1 is supported", "n")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = list(stop)
    else:
        raise RequestError("'stop' must be a string or a list of at most 4 strings", "stop")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not stream:
            raise RequestError("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise RequestError("'stream_options.include_usage' must be a boolean", "stream_options")
    return Work(kind=kind, request_id=request_id, max_tokens=min(max_tokens, worker.max_tokens_cap),
                temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                seed=_int(body, "seed"), stop=stops,
                presence_penalty=_num(body, "presence_penalty", 0.0, -2.0, 2.0),
                frequency_penalty=_num(body, "frequency_penalty", 0.0, -2.0, 2.0))


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def parse_chat(worker: ModelWorker, body: dict) -> Work:
    work = _common(worker, body, "chat", f"chatcmpl-{uuid.uuid4().hex}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            raise RequestError(f"messages[{i}] must be an object with a role in {sorted(_ROLES)}", f"messages[{i}]")
        if not isinstance(msg.get("content"), (str, list, type(None))):
            raise RequestError(f"messages[{i}].content must be a string or a list of parts",
                               f"messages[{i}].content")
    work.prompt = chat_prompt(messages)
    work.stop = [*work.stop, CHAT_STOP]
    work.refusal = any(worker.is_blocked(message_text(m.get("content"))) for m in messages
                       if m.get("role") == "user")
    return work


def parse_completion(worker: ModelWorker, body: dict) -> Work:
    work = _common(worker, body, "completion", f"cmpl-{uuid.uuid4().hex}")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string (or a list of one string)", "prompt")
    work.prompt = prompt
    work.refusal = worker.is_blocked(prompt)
    return work


def parse_embedding(worker: ModelWorker, body: dict) -> tuple[Work, str]:
    model = body.get("model")
    if model is not None and model != worker.model_name:
        raise RequestError(f"The model `{model}` does not exist.", "model", status=404, code="model_not_found")
    raw = body.get("input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise RequestError("'input' must be a non-empty string, list of strings or list of token lists", "input")
    inputs: list[list[int]] = []
    for x in items:
        if isinstance(x, str):
            ids = list(x.encode("utf-8"))
        elif isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 256 for t in x):
            ids = list(x)
        else:
            raise RequestError("each input must be a string or a list of byte tokens (0..255)", "input")
        if not ids:
            raise RequestError("inputs must not be empty", "input")
        inputs.append(ids)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and dims != worker.model.cfg.d_model:
        raise RequestError(f"'dimensions' must be {worker.model.cfg.d_model} for this model", "dimensions")
    return Work(kind="embedding", request_id=f"embd-{uuid.uuid4().hex}", inputs=inputs, n=1), fmt


# -- HTTP ----------------------------------------------------------------------------------------

WORKER = web.AppKey("worker", ModelWorker)
"""The app's :class:`~monitor.demo.worker.ModelWorker`."""


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise RequestError("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object")
    return body


async def _generate(request: web.Request, parse: Callable[[ModelWorker, dict], Work]) -> web.StreamResponse:
    worker = request.app[WORKER]
    try:
        body = await _json_body(request)
        work = parse(worker, body)
    except RequestError as exc:
        return exc.response()
    chat = work.kind == "chat"
    created = int(time.time())
    base = {"id": work.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": worker.model_name}
    if chat:
        base["system_fingerprint"] = None
    echo = "" if chat or not body.get("echo") else work.prompt

    if not body.get("stream"):
        try:
            await worker.run(work)
        except Exception as exc:
            worker.record(work, request.headers, status_error=type(exc).__qualname__)
            log.exception("generation failed")
            return RequestError(f"internal error: {exc}", status=500, type_="internal_error").response()
        worker.record(work, request.headers)
        text = REFUSAL if work.refusal else work.result.text  # type: ignore[union-attr]
        reason = worker.finish_reason(work)
        usage = _usage(work.prompt_tokens, worker.completion_tokens(work))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": reason}
            return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        choice = {"text": echo + text, "index": 0, "logprobs": None, "finish_reason": reason}
        return web.json_response({**base, "choices": [choice], "usage": usage})

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if include_usage else {}
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def chunk(piece: str | None, reason: str | None = None, role: bool = False) -> dict:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if piece is not None:
                delta["content"] = piece
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"text": piece or "", "index": 0, "logprobs": None, "finish_reason": reason}
        return {**base, "choices": [choice], **extra}

    async def writer() -> None:
        if chat:
            await resp.write(_sse(chunk("", role=True)))
        elif echo:
            await resp.write(_sse(chunk(echo)))
        while True:
            piece = await queue.get()
            if piece is DONE:
                return
            await resp.write(_sse(chunk(piece)))

    write_task = asyncio.create_task(writer())
    run_task = asyncio.create_task(worker.run(work, queue.put_nowait))
    error: str | None = None
    try:
        done, _ = await asyncio.wait({write_task, run_task}, return_when=asyncio.FIRST_COMPLETED)
        if write_task in done:
            # The writer ends first only when it failed (the client went away): the generation
            # stops at its next token (finish reason "abort").
            work.cancelled.set()
            (outcome,) = await asyncio.gather(run_task, return_exceptions=True)
            worker.record(work, request.headers,
                          status_error=type(outcome).__qualname__ if isinstance(outcome, BaseException) else None)
            return resp
        try:
            await run_task
        except Exception as exc:
            error = type(exc).__qualname__
            log.exception("generation failed")
        worker.record(work, request.headers, status_error=error)
        queue.put_nowait(DONE)
        await write_task
        if error is not None:
            await resp.write(_sse({"error": {"message": f"internal error: {error}", "type": "internal_error",
                                             "param": None, "code": None}}))
        else:
            await resp.write(_sse(chunk(None if chat else "", reason=worker.finish_reason(work))))
            if include_usage:
                await resp.write(_sse({**base, "choices": [],
                                       "usage": _usage(work.prompt_tokens, worker.completion_tokens(work))}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:  # the client went away after the generation ended
        pass
    except asyncio.CancelledError:
        work.cancelled.set()
        raise
    finally:
        for task in (write_task, run_task):
            if not task.done():
                task.cancel()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_completion)


async def embeddings(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    try:
        work, fmt = parse_embedding(worker, await _json_body(request))
    except RequestError as exc:
        return exc.response()
    try:
        await worker.run(work)
    except Exception as exc:
        worker.record(work, request.headers, status_error=type(exc).__qualname__)
        return RequestError(f"internal error: {exc}", status=500, type_="internal_error").response()
    worker.record(work, request.headers)
    data = []
    for i, vec in enumerate(work.embeddings or []):
        emb: Any = vec if fmt == "float" else base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return web.json_response({"object": "list", "data": data, "model": worker.model_name,
                              "usage": {"prompt_tokens": work.prompt_tokens, "total_tokens": work.prompt_tokens}})


async def models(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    return web.json_response({"object": "list", "data": [{
        "id": worker.model_name, "object": "model", "created": worker.created, "owned_by": "monitor",
        "max_model_len": worker.model.context_window}]})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[WORKER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    return web.json_response({"status": "ok", "model": worker.model_name, "slowdown": worker.slowdown})


async def admin_slowdown(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    if request.method == "POST":
        try:
            body = await _json_body(request)
            factor = body.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1.0 <= factor <= 1000.0:
                raise RequestError("'factor' must be a number from 1 to 1000", "factor")
        except RequestError as exc:
            return exc.response()
        old, worker.slowdown = worker.slowdown, float(factor)
        log.info("slowdown %.2fx -> %.2fx", old, worker.slowdown)
    return web.json_response({"factor": worker.slowdown})


@web.middleware
async def _openai_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) on the API paths in OpenAI's shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") or exc.status < 400:
            raise
        return RequestError(exc.reason, status=exc.status, code=None if exc.status != 404 else "not_found",
                            type_="invalid_request_error").response()


async def create_app(model_name: str = "monitor-demo-tiny", *, seed: int = 0, slowdown: float = 1.0,
                     otlp_endpoint: str | None = None, tracer_provider: TracerProvider | None = None,
                     blocked_topics: Sequence[str] | None = DEFAULT_BLOCKED_TOPICS,
                     model: DemoModel | None = None, max_tokens_cap: int = MAX_TOKENS_CAP,
                     cancel: threading.Event | None = None) -> web.Application:
    """The app; the model is loaded (trained on first use) here, off the event loop.

    ``tracer_provider`` (tests) replaces the OTLP exporter made from ``otlp_endpoint`` and is not
    shut down with the app; ``model`` shares an already loaded model. ``cancel`` stops a first-use
    training at its next step (:class:`~monitor.errors.Cancelled`).
    """
    if model is None:
        model = await asyncio.to_thread(DemoModel.load, seed, cancel=cancel)
    worker = ModelWorker(model, model_name, seed=seed, slowdown=slowdown, otlp_endpoint=otlp_endpoint,
                    tracer_provider=tracer_provider, blocked_topics=blocked_topics, max_tokens_cap=max_tokens_cap)
    app = web.Application(middlewares=[_openai_errors], client_max_size=8 * 1024 * 1024)
    app[WORKER] = worker
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/admin/slowdown", admin_slowdown)

    async def _close(app: web.Application) -> None:
        await asyncio.to_thread(app[WORKER].close)

    app.on_cleanup.append(_close)
    return app


def describe(worker: ModelWorker, url: str) -> str:
    model = worker.model
    cfg = model.cfg
    how = (f"trained in {model.train_seconds:.1f}s (first use), cached at {model.path}" if model.trained
           else f"loaded in {model.load_seconds:.2f}s from {model.path}")
    tracing = f"traces to {worker.otlp_endpoint} (OTLP/gRPC)" if worker.otlp_endpoint else "tracing off"
    return (f"demo model server listening on {url} (OpenAI API at {url}/v1, metrics at {url}/metrics); "
            f"model {worker.model_name}: {model.n_params / 1e6:.2f}M params, {cfg.n_layers} layers, "
            f"d_model {cfg.d_model}, byte tokens, context {cfg.block_size}; {how}; "
            f"slowdown {worker.slowdown:g}x; {tracing}")


