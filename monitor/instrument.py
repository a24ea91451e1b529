"""Instrument a torch generate loop: one OpenTelemetry span per generation, vLLM-style timings.

Wrap the loop in :func:`generation`, time each forward pass with :meth:`Generation.forward`,
count tokens with :meth:`Generation.token` and say why it ended with :meth:`Generation.finish`::

    from monitor.instrument import generation

    with generation("my-model", input_tokens=len(prompt_ids)) as gen:
        with gen.forward():                       # prefill
            logits, cache = model(prompt, None)
        for _ in range(max_tokens):
            next_id = int(logits[-1].argmax())
            if next_id == eos:
                gen.finish("stop")
                break
            gen.token()                           # the first call marks time to first token
            with gen.forward():                   # one decode step
                logits, cache = model(next_id, cache)
        else:
            gen.finish("length")

or decorate the function (it gets the :class:`Generation` when it accepts a ``gen`` keyword)::

    @instrument("my-model", operation="chat")
    def generate(prompt: str, *, gen: Generation | None = None) -> str: ...

On exit one span is emitted through opentelemetry-sdk (``tracer``, or the global tracer
provider's ``monitor.instrument`` tracer), named ``"{operation} {model}"``, kind INTERNAL, with
the GenAI attributes ``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.finish_reasons`` and vLLM's
latency attributes in seconds:

- ``gen_ai.latency.time_to_first_token``: block entry to the first :meth:`~Generation.token`;
- ``gen_ai.latency.time_in_model_prefill``: the first forward pass;
- ``gen_ai.latency.time_in_model_decode``: the sum of the other forward passes;
- ``gen_ai.latency.time_in_model_inference``: start of the first forward pass to the end of
  the last one (forward passes plus sampling between them), so prefill + decode <= inference;
- ``gen_ai.latency.e2e``: the whole block, so inference <= e2e;

plus ``monitor.torch.forward_passes``, ``monitor.torch.device`` (``cuda:0``, ``cpu``) and
``monitor.torch.peak_memory_bytes``:

- on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at entry
  (tensor memory of this device; other work on the device in the meantime counts too);
- on CPU, the growth of the process's peak resident set size (``getrusage`` ``ru_maxrss``)
  during the block: 0 when the process had already peaked higher before. It is process-wide
  and coarse; tracemalloc is not used because torch's tensor allocations bypass it.

Forward passes on CUDA are timed with ``torch.cuda.Event(enable_timing=True)`` pairs recorded on
the current stream and resolved once, when the block ends, so timing adds no synchronisation
per step (the exit synchronises the device once). On CPU ``time.perf_counter`` is used.
The device is ``device=`` when given, else ``cuda:<current>`` when CUDA is available and
initialised, else ``cpu``.

An exception inside the block sets the span status to ERROR with ``error.type`` (and an
``exception`` event) and is re-raised. torch is imported only when CUDA timing is needed.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["Generation", "generation", "instrument"]

P = ParamSpec("P")
R = TypeVar("R")

_TRACER_NAME = "monitor.instrument"


def _max_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _auto_device() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return f"cuda:{torch.cuda.current_device()}"
    return "cpu"


class Generation:
    """Timings and counts of one generation; made by :func:`generation`, not directly."""

    def __init__(self, model: str, operation: str, input_tokens: int | None, device: str) -> None:
        self.model = model
        self.operation = operation
        self.input_tokens = input_tokens
        self.device = device
        self.output_tokens = 0
        self.forward_passes = 0
        self.finish_reasons: list[str] = []
        self.peak_memory_bytes = 0
        self._cuda = device.startswith("cuda")
        self._t0 = time.perf_counter()
        self._t_first_token: float | None = None
        self._t_end: float | None = None
        self._cpu_passes: list[tuple[float, float]] = []
        self._cuda_passes: list[tuple[Any, Any]] = []
        self._rss0 = 0
        # Resolved at the end (seconds); None until then or when nothing was timed.
        self.time_to_first_token: float | None = None
        self.prefill_time: float | None = None
        self.decode_time: float | None = None
        self.inference_time: float | None = None
        self.e2e: float | None = None

    # -- the loop's calls ----------------------------------------------------------------

    @contextmanager
    def forward(self) -> Iterator[None]:
        """Time one forward pass (the first is the prefill, the others decode steps)."""
        self.forward_passes += 1
        if self._cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._cuda_passes.append((start, end))
        else:
            t = time.perf_counter()
            try:
                yield
            finally:
                self._cpu_passes.append((t, time.perf_counter()))

    def token(self, n: int = 1) -> None:
        """Count ``n`` generated tokens; the first call marks the time to first token."""
        if self._t_first_token is None:
            self._t_first_token = time.perf_counter()
        self.output_tokens += n

    def finish(self, reason: str) -> None:
        """Record why the generation ended (``stop``, ``length``, ...)."""
        self.finish_reasons.append(reason)

    # -- resolution ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss0 = _max_rss_bytes()
        self._t0 = time.perf_counter()

    def _end(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)  # the one sync: resolves every recorded event
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
            passes = [s.elapsed_time(e) / 1000.0 for s, e in self._cuda_passes]
            if self._cuda_passes:
                self.inference_time = self._cuda_passes[0][0].elapsed_time(self._cuda_passes[-1][1]) / 1000.0
        else:
            self.peak_memory_bytes = max(0, _max_rss_bytes() - self._rss0)
            passes = [e - s for s, e in self._cpu_passes]
            if self._cpu_passes:
                self.inference_time = self._cpu_passes[-1][1] - self._cpu_passes[0][0]
        self._t_end = time.perf_counter()
        self.e2e = self._t_end - self._t0
        if passes:
            self.prefill_time = passes[0]
            self.decode_time = sum(passes[1:])
            self.inference_time = max(self.inference_time or 0.0, self.prefill_time + self.decode_time)
        if self._t_first_token is not None:
            self.time_to_first_token = self._t_first_token - self._t0

    def attributes(self) -> dict[str, Any]:
        """The span's attributes (latencies only once the block has ended)."""
        a: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.request.model": self.model,
            "gen_ai.usage.output_tokens": self.output_tokens,
            "monitor.torch.forward_passes": self.forward_passes,
            "monitor.torch.device": self.device,
            "monitor.torch.peak_memory_bytes": self.peak_memory_bytes,
        }
        if self.input_tokens is not None:
            a["gen_ai.usage.input_tokens"] = int(self.input_tokens)
        if self.finish_reasons:
            a["gen_ai.response.finish_reasons"] = list(self.finish_reasons)
        for key, value in (("time_to_first_token", self.time_to_first_token),
                           ("time_in_model_prefill", self.prefill_time),
                           ("time_in_model_decode", self.decode_time),
                           ("time_in_model_inference", self.inference_time),
                           ("e2e", self.e2e)):
            if value is not None:
                a[f"gen_ai.latency.{key}"] = float(value)
        return a

    def __repr__(self) -> str:
        return f"Generation({json.dumps(self.attributes(), default=str)})"


@contextmanager
def generation(model: str, *, tracer: trace.Tracer | None = None, operation: str = "text_completion",
               input_tokens: int | None = None, attributes: dict[str, Any] | None = None,
               device: str | None = None) -> Iterator[Generation]:
    """Time one generation and emit its span on exit; see the module docstring."""
    tracer = tracer if tracer is not None else trace.get_tracer(_TRACER_NAME)
    gen = Generation(model, operation, input_tokens, device or _auto_device())
    span = tracer.start_span(f"{operation} {model}", kind=SpanKind.INTERNAL, attributes=attributes)
    gen._start()
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield gen
    except BaseException as exc:
        try:
            _close(gen, span)
        except Exception:  # the block's own exception is the one to report
            pass
        span.set_attribute("error.type", type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__qualname__))
        span.end()
        raise
    _close(gen, span)
    span.end()


def _close(gen: Generation, span: trace.Span) -> None:
    try:
        gen._end()
    finally:
        span.set_attributes(gen.attributes())


def instrument(model: str, **kw: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: run each call of a generate function inside :func:`generation` (same keywords).

    The function gets the :class:`Generation` as ``gen=`` when it has a ``gen`` parameter (it then
    counts tokens and times forward passes itself); otherwise only the call is timed (e2e).
    Coroutine functions are supported.
    """

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        wants_gen = "gen" in inspect.signature(fn).parameters

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                with generation(model, **kw) as gen:
                    if wants_gen:
                        kwargs["gen"] = gen
                    return await fn(*args, **kwargs)  # type: ignore[misc]

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with generation(model, **kw) as gen:
                if wants_gen:
                    kwargs["gen"] = gen
                return fn(*args, **kwargs)

        return wrapper

    return wrap
