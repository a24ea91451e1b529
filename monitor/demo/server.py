"""The reference model server: the demo model behind an OpenAI-compatible API, observable like vLLM.

Endpoints:

- ``GET /v1/models``; ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream`` with
  Server-Sent Events, ``stream_options.include_usage``), ``POST /v1/embeddings`` (mean of the
  model's final hidden states; ``encoding_format`` ``float`` or ``base64``), in OpenAI's JSON
  shapes; validation errors are 400 with OpenAI's error shape.
- ``GET /metrics``: Prometheus text with vLLM's names (labels ``model_name``, ``engine="0"``).
- ``GET /health``; ``POST /admin/slowdown {"factor": 3.0}`` (``GET`` reads it): multiplies the
  model's compute at run time, the demo's latency regression.

Scheduling: the model runs on ONE worker thread, so requests queue like on a single-GPU server;
the wait is the request's queue time. Tokens are bytes: ``prompt_tokens`` counts the prompt's
UTF-8 bytes (chat: of the templated prompt, see :func:`monitor.demo.model.chat_prompt`),
``completion_tokens`` the bytes of the returned text (a stop string is cut and not counted).
``max_tokens`` defaults to 64 and is capped at 512 (larger values are lowered, not refused).

Policy (the guardrail): a request whose user text mentions one of the blocked topics (a
case-insensitive keyword match at a word start; default :data:`DEFAULT_BLOCKED_TOPICS`,
configurable) is not generated: the reply is ``"I'm sorry, but I can't help with that."`` with
finish reason ``stop`` (its span carries ``monitor.demo.refusal=true``).

Tracing (as ``vllm serve --otlp-traces-endpoint``): with ``otlp_endpoint`` each request ends
with one span ``llm_request``, kind SERVER, child of the request's W3C ``traceparent``, with
vLLM's attributes (latencies in seconds, ``gen_ai.response.finish_reasons`` a JSON string), sent
by a BatchSpanProcessor and the OTLP/gRPC exporter of a TracerProvider of the server's own
(resource ``service.name`` = ``<model_name>-server``); the global provider is never set. The
latencies follow vLLM: queue = arrival to the worker picking the request up, time to first
token and e2e from arrival, prefill / decode / inference from the forward passes timed by
:func:`monitor.instrument.generation` (plus ``monitor.torch.*`` attributes). The instrument's
own span is not exported: it is a model-request span too and the monitor would count each
request twice.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any
from aiohttp import web

from monitor.demo.api import WORKER, create_app, describe
from monitor.demo.worker import DEFAULT_BLOCKED_TOPICS, ModelWorker, REFUSAL, log

__all__ = ["DEFAULT_BLOCKED_TOPICS", "REFUSAL", "DemoServer", "ModelWorker", "create_app", "serve", "main"]


class DemoServer:
    """The server on its own event loop in a thread (tests, embedding in other programs)::

        with DemoServer(port=0) as srv:
            openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_kw: Any) -> None:
        self.host, self.port = host, port
        self.cancel = threading.Event()
        """Set by :meth:`stop`: a first-use training still running ends within a step."""
        self.app_kw = {"cancel": self.cancel, **app_kw}
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def worker(self) -> ModelWorker:
        assert self.app is not None
        return self.app[WORKER]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 600.0) -> DemoServer:
        started = concurrent.futures.Future[None]()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._astart())
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"demo-server-{self.port}", daemon=True)
        self._thread.start()
        started.result(timeout)
        return self

    async def _astart(self) -> None:
        self.app = await create_app(**self.app_kw)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("%s", describe(self.worker, self.url))

    def stop(self, timeout: float = 30.0) -> None:
        self.cancel.set()
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(host: str, port: int, stop_event: asyncio.Event | None = None, **app_kw: Any) -> None:
    app = await create_app(**app_kw)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("%s", describe(app[WORKER], f"http://{host}:{port}"))
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
    try:
        await stop.wait()
    finally:
        log.info("demo model server stopping")
        await runner.cleanup()


def serve(host: str = "127.0.0.1", port: int = 8000, otlp_endpoint: str | None = None, seed: int = 0,
          model_name: str = "monitor-demo-tiny", slowdown: float = 1.0, *,
          blocked_topics: Sequence[str] | None = DEFAULT_BLOCKED_TOPICS) -> None:
    """Run the server until SIGINT or SIGTERM (blocking). Trains the model first on first use."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    asyncio.run(_serve(host, port, model_name=model_name, seed=seed, slowdown=slowdown,
                       otlp_endpoint=otlp_endpoint, blocked_topics=blocked_topics))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="monitor demo-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [8000]")
    p.add_argument("--otlp-endpoint", default=None,
                   help="OTLP/gRPC endpoint for llm_request spans, e.g. http://127.0.0.1:4317 [off]")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling seed [0]")
    p.add_argument("--model-name", default="monitor-demo-tiny", help="served model name [monitor-demo-tiny]")
    p.add_argument("--slowdown", type=float, default=1.0, help="compute multiplier (latency regression) [1]")
    p.add_argument("--blocked-topics", default=",".join(DEFAULT_BLOCKED_TOPICS),
                   help="comma-separated keywords the policy refuses ('' for none) [%(default)s]")
    a = p.parse_args(argv)
    serve(a.host, a.port, a.otlp_endpoint, a.seed, a.model_name, a.slowdown,
          blocked_topics=[t for t in a.blocked_topics.split(",") if t.strip()])


if __name__ == "__main__":  # pragma: no cover
    main()
