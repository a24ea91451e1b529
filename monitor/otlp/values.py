"""OTLP ``AnyValue`` to Python and to the strings the Collector's ClickHouse exporter stores.

Map columns are ``Map(String, String)``, so every attribute value becomes a
string there exactly as the Collector writes it: booleans ``true``/``false``,
integers in decimal, doubles without exponent, arrays and maps as JSON,
bytes as base64.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

__all__ = ["array_str", "attrs_to_python", "attrs_to_str_map", "double_str", "json_text", "to_python", "to_str"]

json_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""``json.dumps(v, ensure_ascii=False, separators=(",", ":"))``, without building an encoder per call."""
_json_string = encode_basestring  # how that encoder writes a string


def to_python(v: Any) -> Any:
    """The Python value of an ``AnyValue`` (lists and dicts for arrays and kvlists)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [to_python(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: to_python(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return None


_INF = float("inf")


def double_str(d: float) -> str:
    """A double as the Collector writes it: no exponent, no trailing ``.0``; ``NaN``, ``+Inf``, ``-Inf``."""
    if d != d:
        return "NaN"
    if d == _INF or d == -_INF:
        return "+Inf" if d > 0 else "-Inf"
    s = repr(d)
    if "e" in s or "E" in s:
        s = format(Decimal(s), "f")
    if s.endswith(".0"):
        s = s[:-2]
    return s


def to_str(v: Any) -> str:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return str(v.int_value)
    if kind == "double_value":
        return double_str(v.double_value)
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind is None:
        return ""
    if kind == "array_value":
        return array_str(v.array_value)
    return json_text(to_python(v))


def array_str(arr: Any) -> str:
    """An ``ArrayValue`` as :func:`to_str` writes it (JSON)."""
    items = []
    for x in arr.values:
        s = x.string_value
        if not s:
            break
        items.append(s)
    else:  # every element a non-empty string: what json_text writes, without the encoder
        return "[" + ",".join([_json_string(s) for s in items]) + "]"
    return json_text([to_python(x) for x in arr.values])


def attrs_to_python(kvs: Any) -> dict[str, Any]:
    return {kv.key: to_python(kv.value) for kv in kvs}


def attrs_to_str_map(kvs: Any) -> dict[str, str]:
    return {kv.key: to_str(kv.value) for kv in kvs}
