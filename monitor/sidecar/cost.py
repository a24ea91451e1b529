"""GPU cost inputs, stamped on model-request spans in the sidecar (where the GPUs are known).

Ingest turns them into ``gpu_seconds`` (engine time x GPUs per request) and
``gpu_cost`` (GPU-seconds x price per GPU-hour / 3600) on the event. With
continuous batching several requests share a GPU at once, so per-request
GPU-seconds are an upper bound; totals per model over a window, divided by
the window, give the share of the fleet a model keeps busy.

Managed endpoints (``proxy.routes`` of kind ``managed``) are priced per token instead: for a span
whose model matches ``cost.token_prices`` the processor stamps the prices on the span
(:data:`~monitor.otlp.model_identity.PRICE_INPUT_ATTR`, ...), and ingest computes ``token_cost``
from them and the span's token counts (:mod:`monitor.otlp.model_identity`). Stamped per span
(a price belongs to a model, not a host); a span that already carries prices keeps them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from monitor.otlp.codec import Signal
from monitor.otlp.genai import GPU_COUNT_KEY as GPU_COUNT
from monitor.otlp.genai import GPU_PRICE_KEY as GPU_PRICE
from monitor.otlp.model_identity import PRICE_CACHED_ATTR, PRICE_INPUT_ATTR, PRICE_OUTPUT_ATTR

__all__ = ["cost_processor", "GPU_COUNT", "GPU_PRICE"]


_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model")
_MAX_CACHED = 4096


def _price_lookup(prices: dict[str, Any]) -> Callable[[str], tuple[float, float, float | None] | None]:
    """model -> (input, output, cached input) per 1M from ``cost.token_prices`` (exact name, then the
    first matching glob), memoised per model name."""
    memo: dict[str, tuple[float, float, float | None] | None] = {}

    def find(model: str) -> tuple[float, float, float | None] | None:
        if model in memo:
            return memo[model]
        p = prices.get(model)
        if p is None:
            p = next((v for k, v in prices.items() if fnmatch.fnmatchcase(model, k)), None)
        found = None if p is None else (p.input_per_1m, p.output_per_1m, p.cached_input_per_1m)
        if len(memo) < _MAX_CACHED:
            memo[model] = found
        return found
    return find


def _stamp_prices(msg: Message, find: Callable[[str], tuple[float, float, float | None] | None]) -> None:
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                model = ""
                for kv in span.attributes:
                    if kv.key == PRICE_INPUT_ATTR:
                        model = ""
                        break
                    if kv.key in _MODEL_KEYS and (not model or kv.key == _MODEL_KEYS[0]):
                        model = kv.value.string_value
                if not model:
                    continue
                price = find(model)
                if price is None:
                    continue
                for key, value in zip((PRICE_INPUT_ATTR, PRICE_OUTPUT_ATTR, PRICE_CACHED_ATTR), price):
                    if value is not None:
                        a = span.attributes.add()
                        a.key, a.value.double_value = key, float(value)


def cost_processor(gpus: Callable[[], int], price_per_gpu_hour: float,
                   token_prices: dict[str, Any] | None = None) -> Callable[[Signal, Message], None]:
    """An Ingress processor adding the GPU count (and price, when set) to the resource of every span
    batch without them: the GPUs belong to the host that served the requests, and stamping the resource
    costs one look per resource, not per span. A span's own ``monitor.gpu.count`` still wins."""

    find = _price_lookup(token_prices) if token_prices else None

    def process(signal: Signal, msg: Message) -> None:
        if signal != "traces":
            return
        if find is not None:
            _stamp_prices(msg, find)
        count = gpus()
        for rs in msg.resource_spans:
            attrs = rs.resource.attributes
            if any(kv.key == GPU_COUNT for kv in attrs):
                continue
            a = attrs.add()
            a.key, a.value.int_value = GPU_COUNT, count
            if price_per_gpu_hour > 0:
                b = attrs.add()
                b.key, b.value.double_value = GPU_PRICE, price_per_gpu_hour
    return process
