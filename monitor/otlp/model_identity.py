"""Which model, version, adapter and endpoint answered a request, and what its tokens cost. Pure.

The attribute names here are the contract between the parts that know (the capture proxy's
routes and adapters, the shadow sender, the cost processor) and ingest, which fills the
``inference_events`` columns from them (:func:`apply_identity`, called by
:func:`monitor.otlp.genai.span_to_event`).

Where each column comes from, first match wins:

- ``model_version``: :data:`VERSION_ATTR` (a proxy route's ``model_version``); ``model.version`` on
  the span or its resource; ``service.version`` of the resource of a server-side span (a model
  server's own deployment label; a client SDK's ``service.version`` is the application's, not the
  model's, so CLIENT spans do not use it); else the served snapshot: the response's model when it
  differs from the requested name (``gpt-4o`` answered by ``gpt-4o-2024-08-06``).
- ``adapter``: :data:`ADAPTER_ATTR` (``proxy.adapters``: a request to an adapter name that vLLM
  serves with ``--lora-modules``; or a route's ``adapter``); the base model goes in
  ``attributes[BASE_ATTR]``.
- ``endpoint`` / ``endpoint_kind``: :data:`ENDPOINT_ATTR` / :data:`ENDPOINT_KIND_ATTR` (the proxy route).
- ``shadow_of``: :data:`SHADOW_OF_ATTR` (the shadow sender).
- ``cached_tokens``: ``gen_ai.usage.cache_read.input_tokens`` (OpenAI's
  ``usage.prompt_tokens_details.cached_tokens``, read by the proxy).
- ``token_cost``: the prices the cost processor stamped (:data:`PRICE_INPUT_ATTR`, ...) times the
  tokens: ``((input - cached) x input + cached x cached_input + output x output) / 1e6``.
"""

from __future__ import annotations

import math
from typing import Any

from monitor.events import InferenceEvent

__all__ = [
    "ADAPTER_ATTR",
    "BASE_ATTR",
    "CACHED_TOKENS_ATTR",
    "ENDPOINT_ATTR",
    "ENDPOINT_KIND_ATTR",
    "MANAGED",
    "PRICE_CACHED_ATTR",
    "PRICE_INPUT_ATTR",
    "PRICE_OUTPUT_ATTR",
    "SHADOW_OF_ATTR",
    "VERSION_ATTR",
    "apply_identity",
    "identify",
    "token_cost",
]

VERSION_ATTR = "monitor.model.version"
ADAPTER_ATTR = "monitor.model.adapter"
BASE_ATTR = "monitor.model.base"
ENDPOINT_ATTR = "monitor.endpoint"
ENDPOINT_KIND_ATTR = "monitor.endpoint.kind"
SHADOW_OF_ATTR = "monitor.shadow_of"
CACHED_TOKENS_ATTR = "gen_ai.usage.cache_read.input_tokens"
PRICE_INPUT_ATTR = "monitor.price.input_per_1m"
PRICE_OUTPUT_ATTR = "monitor.price.output_per_1m"
PRICE_CACHED_ATTR = "monitor.price.cached_input_per_1m"
MANAGED = "managed"

_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
_UINT32 = 1 << 32


def _s(attrs: dict[str, Any] | None, key: str) -> str:
    if not attrs:
        return ""
    v = attrs.get(key)
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _f(attrs: dict[str, Any], key: str) -> float | None:
    v = attrs.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def token_cost(input_tokens: int | None, output_tokens: int | None, cached_tokens: int | None,
               price_in: float, price_out: float, price_cached: float | None) -> float | None:
    """The request's cost from its tokens and per-million prices; None when it reported no tokens."""
    if input_tokens is None and output_tokens is None:
        return None
    inp = input_tokens or 0
    cached = min(cached_tokens or 0, inp)
    cached_price = price_in if price_cached is None else price_cached
    return ((inp - cached) * price_in + cached * cached_price + (output_tokens or 0) * price_out) / 1e6


def apply_identity(ev: InferenceEvent, span: Any, attrs: dict[str, Any], resource: dict[str, Any] | None) -> None:
    """Fill ``ev``'s identity and token-cost columns from the span's attributes (see the module doc).
    Call after the token counts are set; GPU cost of a managed endpoint is cleared here."""
    strs = {k: _s(attrs, k) for k in attrs}
    (ev.model_version, ev.adapter, ev.endpoint, ev.endpoint_kind, ev.shadow_of, ev.cached_tokens,
     ev.token_cost) = identify(strs, getattr(span, "kind", 0), strs.get("gen_ai.request.model", ""),
                               strs.get("gen_ai.response.model", ""), _s(resource, "model.version"),
                               _s(resource, "service.version"), ev.input_tokens, ev.output_tokens)
    ev.requested_model = strs.get("gen_ai.request.model", "")
    if ev.endpoint_kind == MANAGED:
        ev.gpu_seconds = ev.gpu_cost = None  # a managed API's GPUs are not ours: it is priced per token


def identify(attrs: dict[str, str], kind: int, requested: str, served: str, resource_version: str,
             resource_service_version: str, input_tokens: int | None, output_tokens: int | None
             ) -> tuple[str, str, str, str, str, int | None, float | None]:
    """``(model_version, adapter, endpoint, endpoint_kind, shadow_of, cached_tokens, token_cost)`` of a
    span from what the caller already read: its attributes as strings, its kind, its requested and
    served model names, its resource's ``model.version`` and ``service.version``, its token counts."""
    get = attrs.get
    version = get(VERSION_ATTR) or get("model.version") or resource_version
    if not version and kind == _SERVER:
        version = resource_service_version
    adapter = get(ADAPTER_ATTR) or ""
    if not version and served and requested and served != requested and not adapter:
        version = served
    cached_tokens = cost = None
    if CACHED_TOKENS_ATTR in attrs:
        cached = _f(attrs, CACHED_TOKENS_ATTR)
        cached_tokens = int(cached) if cached is not None and cached < _UINT32 else None
    if PRICE_INPUT_ATTR in attrs or PRICE_OUTPUT_ATTR in attrs:
        price_in, price_out = _f(attrs, PRICE_INPUT_ATTR), _f(attrs, PRICE_OUTPUT_ATTR)
        if price_in is not None or price_out is not None:
            cost = token_cost(input_tokens, output_tokens, cached_tokens, price_in or 0.0, price_out or 0.0,
                              _f(attrs, PRICE_CACHED_ATTR))
    return (version, adapter, get(ENDPOINT_ATTR) or "", get(ENDPOINT_KIND_ATTR) or "", get(SHADOW_OF_ATTR) or "",
            cached_tokens, cost)
