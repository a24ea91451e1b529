"""The servers the paths lead to, each run as its own process through ``bench/proxy.py _upstream`` /
``_passthrough``:

- the fake upstream: an aiohttp server that answers ``POST /v1/chat/completions`` like an
  OpenAI-compatible engine. With ``"stream": true`` a role chunk, ``--chunks`` content chunks
  ``--interval-ms`` apart on a fixed schedule (the first one ``--prefill-ms`` after the role chunk), a
  finish chunk, a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``; without it
  the same text as one JSON answer after the same total time. ``GET /health`` answers ``ok``.
- the plain aiohttp pass-through (``--paths ...,aiohttp``): the capture proxy's stack (aiohttp + uvloop)
  forwarding bytes and nothing else, to separate what Python/aiohttp costs from what capture does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxybench.conversation import CHAT, MODEL, N_VARIANTS, answer_tokens, new_loop


def _serve_forever(make_app: Callable[[], Awaitable[Any]], port: int, ready: str | None = None,
                   **runner_kw: Any) -> int:
    """Runs the aiohttp app ``make_app()`` builds (in the loop) on 127.0.0.1:``port`` until Ctrl-C."""
    from aiohttp import web

    async def serve() -> None:
        runner = web.AppRunner(await make_app(), access_log=None, handle_signals=False, **runner_kw)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True, backlog=4096).start()
        if ready:
            print(ready, file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve())
    except KeyboardInterrupt:
        pass
    return 0


def upstream_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="proxy.py _upstream")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--prefill-ms", type=float, default=5.0)
    a = ap.parse_args(argv)
    from aiohttp import web

    interval, prefill, n = a.interval_ms / 1000, a.prefill_ms / 1000, a.chunks
    created = int(time.time())
    pre = b'data: {"id":"chatcmpl-'

    def tail(choices: list, usage: Any = None, with_usage_key: bool = True) -> bytes:
        obj: dict[str, Any] = {"object": "chat.completion.chunk", "created": created, "model": MODEL,
                               "choices": choices}
        if with_usage_key:
            obj["usage"] = usage
        return ('",' + json.dumps(obj, ensure_ascii=False, separators=(",", ":"))[1:] + "\n\n").encode()

    role_tail = tail([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None}])
    finish_tail = tail([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    variants = []
    for v in range(N_VARIANTS):
        toks = answer_tokens(v, n)
        variants.append(([tail([{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}])
                          for t in toks], "".join(toks)))
    counter = iter(range(1, 1 << 62))

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            req = json.loads(await request.read())
            variant = int(req.get("seed") or 0) % N_VARIANTS
        except (ValueError, TypeError, AttributeError):
            return web.json_response({"error": {"message": "bad request body"}}, status=400)
        rid = f"{next(counter):012x}".encode()
        chunks, text = variants[variant]
        prompt_tokens = len(req.get("messages") and json.dumps(req["messages"]) or "") // 4
        loop = asyncio.get_running_loop()
        if not req.get("stream"):
            await asyncio.sleep(prefill + (n - 1) * interval)
            return web.json_response({
                "id": f"chatcmpl-{rid.decode()}", "object": "chat.completion", "created": created, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                          "total_tokens": prompt_tokens + n}})
        opts = req.get("stream_options")
        usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        head = pre + rid
        t0 = loop.time()
        await resp.write(head + role_tail)
        for k, ch in enumerate(chunks):
            delay = t0 + prefill + k * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(head + ch)
        await resp.write(head + finish_tail)
        if usage:
            await resp.write(head + tail([], {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                              "total_tokens": prompt_tokens + n}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def make_app() -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT, chat)
        app.router.add_get("/health", health)
        return app

    return _serve_forever(make_app, a.port, ready=f"upstream listening on 127.0.0.1:{a.port}")


def passthrough_main(argv: list[str]) -> int:
    """``--paths ...,aiohttp``: the same aiohttp + uvloop stack as the capture proxy, forwarding bytes and
    nothing else (no parsing, no span, no ingest) -- separates what Python/aiohttp costs from what capture does."""
    ap = argparse.ArgumentParser(prog="proxy.py _passthrough")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    a = ap.parse_args(argv)
    import aiohttp
    from aiohttp import web

    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
    state: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with state["session"].request(request.method, a.upstream + request.rel_url.raw_path_qs,
                                            data=body, headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items()
                                                                 if k.lower() not in hop})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def make_app() -> web.Application:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                 timeout=aiohttp.ClientTimeout(total=600), auto_decompress=False)
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    return _serve_forever(make_app, a.port, auto_decompress=False)
