"""The request features whose drift is tested: one ClickHouse expression over ``inference_events`` each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Feature", "FeatureType", "FEATURES"]

FeatureType = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType
    sql: str
    """A ClickHouse expression over ``inference_events`` (Nullable(Float64) or Nullable(String))."""
    requires: tuple[str, ...] = ()
    """Columns that may be missing from the table (the feature is skipped then)."""


def _finite(expr: str) -> str:
    return f"if(isFinite({expr}), {expr}, NULL)"


def _num(col: str) -> Feature:
    return Feature(col, "numeric", _finite(f"toFloat64({col})"))


_TPS = ("multiIf(decode_ms > 0, output_tokens / (decode_ms / 1000), "
        "(latency_ms - coalesce(ttft_ms, 0)) > 0, output_tokens / ((latency_ms - coalesce(ttft_ms, 0)) / 1000), "
        "NULL)")

FEATURES: dict[str, Feature] = {f.name: f for f in [
    _num("input_tokens"),
    _num("output_tokens"),
    Feature("prompt_length", "numeric", "if(prompt = '', NULL, toFloat64(lengthUTF8(prompt)))"),
    Feature("completion_length", "numeric", "if(completion = '', NULL, toFloat64(lengthUTF8(completion)))"),
    _num("ttft_ms"),
    _num("latency_ms"),
    _num("itl_ms"),
    _num("queue_ms"),
    _num("prefill_ms"),
    _num("decode_ms"),
    Feature("tokens_per_second", "numeric", _finite(f"toFloat64({_TPS})")),
    Feature("finish_reason", "categorical", "nullIf(toString(finish_reason), '')"),
    Feature("status_code", "categorical", "nullIf(toString(status_code), '')"),
    Feature("prompt_language", "categorical", "nullIf(toString(prompt_language), '')", ("prompt_language",)),
    Feature("completion_language", "categorical", "nullIf(toString(completion_language), '')",
            ("completion_language",)),
    Feature("model_version", "categorical", "nullIf(attributes['gen_ai.response.model'], '')"),
]}
"""Every feature the check tests. ``model_version`` is ``gen_ai.response.model``: the served snapshot."""
