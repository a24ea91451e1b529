"""JSON output: whether a request asked for JSON (and with which schema), and whether the completion is it.

Parsing uses orjson (strict RFC 8259, the stdlib for integers beyond 64 bits); schemas are checked
natively for the common keywords and by ``jsonschema`` for the rest (:func:`json_valid`). Pure: the
only state is a small cache of judged schemas.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

import orjson

__all__ = ["json_requested", "json_valid"]


_FORMAT_KEYS = ("gen_ai.request.response_format", "monitor.request.response_format",
                "gen_ai.openai.request.response_format")
_JSON_TYPES = frozenset({"json", "json_object", "json_schema"})


def _schema_of(fmt: Any) -> dict | None:
    """The JSON schema inside an OpenAI ``response_format`` (chat: ``{"type": "json_schema",
    "json_schema": {"schema": ...}}``; Responses API: ``{"type": "json_schema", "schema": ...}``)."""
    if not isinstance(fmt, dict):
        return None
    inner = fmt.get("json_schema")
    if isinstance(inner, dict):
        schema = inner.get("schema")
        if isinstance(schema, dict):
            return schema
    schema = fmt.get("schema")
    return schema if isinstance(schema, dict) else None


def _parse_format(value: str) -> tuple[bool, dict | None]:
    v = value.strip()
    if not v:
        return False, None
    if v[0] in "{\"":
        try:
            fmt = orjson.loads(v)
        except orjson.JSONDecodeError:
            return False, None
        if isinstance(fmt, str):
            return fmt.lower() in _JSON_TYPES, None
        if isinstance(fmt, dict):
            kind = str(fmt.get("type", "")).lower()
            if kind in _JSON_TYPES:
                return True, _schema_of(fmt)
            if isinstance(fmt.get("format"), dict):  # Responses API: {"format": {...}} under "text"
                return _parse_format(orjson.dumps(fmt["format"]).decode())
        return False, None
    return v.lower() in _JSON_TYPES, None


def json_requested(attributes: dict[str, str]) -> tuple[bool, dict | None]:
    """Whether the request asked for JSON output, and the JSON schema it gave (if any).

    Read, in order: ``gen_ai.output.type`` == ``json`` (OTel GenAI); an OpenAI ``response_format``
    recorded as ``gen_ai.request.response_format`` / ``monitor.request.response_format`` /
    ``gen_ai.openai.request.response_format`` (a JSON object such as
    ``{"type": "json_schema", "json_schema": {"schema": {...}}}``, or just its type:
    ``json_object``, ``json_schema``); OpenInference ``llm.invocation_parameters`` (a JSON object
    with ``response_format``, or Ollama's ``format``: ``"json"`` or a schema).

    Invariants: never raises; malformed attribute values mean "not requested" (for that key).
    The schema is returned as given (not validated here).
    """
    if not attributes:
        return False, None
    requested = False
    schema: dict | None = None
    out_type = attributes.get("gen_ai.output.type")
    if out_type and out_type.strip().lower() == "json":
        requested = True
    for key in _FORMAT_KEYS:
        value = attributes.get(key)
        if value:
            req, sch = _parse_format(value)
            if req:
                requested = True
                schema = schema or sch
    params = attributes.get("llm.invocation_parameters")
    if params and ("response_format" in params or "format" in params):
        try:
            p = orjson.loads(params)
        except orjson.JSONDecodeError:
            p = None
        if isinstance(p, dict):
            rf = p.get("response_format")
            if rf is not None:
                req, sch = _parse_format(rf if isinstance(rf, str) else orjson.dumps(rf).decode())
                requested, schema = requested or req, schema or sch
            fmt = p.get("format")
            if fmt == "json":
                requested = True
            elif isinstance(fmt, dict) and fmt.get("type") is not None:
                requested, schema = True, schema or fmt
    return requested, schema


_FENCED = re.compile(r"\A\s*(?:```|~~~)[ \t]*(?:json5?|jsonc|javascript|js)?[ \t]*\r?\n(.*?)\r?\n?[ "
                     r"\t]*(?:```|~~~)\s*\Z",
                     re.S | re.I)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strip_fence(text: str) -> str:
    s = text.strip()
    if s.startswith(("```", "~~~")):
        m = _FENCED.match(s)
        if m is not None:
            return m.group(1).strip()
    return s


_JUDGES: OrderedDict[bytes, tuple[str, Any]] = OrderedDict()
_JUDGES_LOCK = threading.Lock()
_JUDGE_CACHE = 256

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
                          "writeOnly", "format", "$schema", "$id", "contentMediaType", "contentEncoding"})
"""Keywords that never make an instance invalid (``format`` is an annotation unless a format
checker is asked for, and none is)."""
_NATIVE = frozenset({"type", "enum", "const", "required", "properties", "additionalProperties", "items",
                     "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
                     "exclusiveMaximum", "minProperties", "maxProperties", "anyOf", "oneOf", "allOf", "not"})
"""Keywords :func:`_violates` evaluates exactly as ``jsonschema`` does (drafts 6 to 2020-12)."""
_SUBSCHEMA_MAPS = ("properties",)
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf")


def _jsonschema() -> Any:
    """The ``jsonschema`` module, or None when it is not installed."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - the native check takes over
        return None
    return jsonschema


def _native_ok(schema: Any, depth: int = 0) -> bool:
    """True when every keyword of ``schema`` (recursively) is in :data:`_NATIVE` or an annotation,
    in the form drafts 6 to 2020-12 share (``items`` a schema, ``exclusiveMinimum`` a number)."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or depth > 32:
        return False
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key not in _NATIVE:
            return False
        if key in _SUBSCHEMA_MAPS:
            if not isinstance(value, dict) or not all(_native_ok(v, depth + 1) for v in value.values()):
                return False
        elif key in _SUBSCHEMA_LISTS:
            if not isinstance(value, list) or not value or not all(_native_ok(v, depth + 1) for v in value):
                return False
        elif key in ("additionalProperties", "items", "not"):
            if not _native_ok(value, depth + 1):
                return False
        elif key in ("exclusiveMinimum", "exclusiveMaximum", "minimum", "maximum"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
        elif key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"):
            if isinstance(value, bool) or not isinstance(value, int):
                return False
        elif key == "type":
            kinds = value if isinstance(value, list) else [value]
            if not kinds or not all(k in _TYPES for k in kinds):
                return False
        elif key == "required":
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                return False
        elif key == "enum" and not isinstance(value, list):
            return False
    return True


def _judge(schema: dict) -> tuple[str, Any]:
    """How to validate against ``schema``, cached per schema: ``("native", None)``,
    ``("jsonschema", validator)``, ``("none", None)`` for an invalid schema (it judges nothing),
    or ``("subset", None)`` without ``jsonschema`` for keywords beyond the native set."""
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return "none", None
    with _JUDGES_LOCK:
        judge = _JUDGES.get(key)
        if judge is not None:
            _JUDGES.move_to_end(key)
            return judge
    native = _native_ok(schema)
    js = _jsonschema()
    if js is None:
        judge = ("native" if native else "subset", None)
    else:
        cls = js.validators.validator_for(schema, default=js.Draft202012Validator)
        try:
            cls.check_schema(schema)
            judge = ("native", None) if native else ("jsonschema", cls(schema))
        except Exception:  # SchemaError, unresolvable $ref ...: the schema cannot judge anything
            judge = ("none", None)
    with _JUDGES_LOCK:
        _JUDGES[key] = judge
        if len(_JUDGES) > _JUDGE_CACHE:
            _JUDGES.popitem(last=False)
    return judge


_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    py = _TYPES.get(kind)
    return True if py is None else isinstance(value, py)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality as ``jsonschema`` has it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return a == b


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _violates(value: Any, schema: Any, depth: int = 0) -> bool:
    """True when ``value`` is invalid under ``schema``, for the keywords of :data:`_NATIVE`
    (exactly as ``jsonschema``); other keywords are ignored (then it is a subset check)."""
    if schema is True:
        return False
    if schema is False:
        return True
    if not isinstance(schema, dict) or depth > 64:
        return False
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_type_ok(value, k) for k in kinds if isinstance(k, str)):
            return True
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_equal(value, e) for e in enum):
        return True
    if "const" in schema and not _equal(value, schema["const"]):
        return True
    if _is_number(value):
        for key, bad in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                         ("exclusiveMinimum", lambda v, b: v <= b), ("exclusiveMaximum", lambda v, b: v >= b)):
            bound = schema.get(key)
            if _is_number(bound) and bad(value, bound):
                return True
    elif isinstance(value, str):
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if isinstance(lo, int) and len(value) < lo or isinstance(hi, int) and len(value) > hi:
            return True
    elif isinstance(value, dict):
        required = schema.get("required")
        if isinstance(required, list) and any(k not in value for k in required):
            return True
        lo, hi = schema.get("minProperties"), schema.get("maxProperties")
        if isinstance(lo, int) and len(value) < lo or isinstance(hi, int) and len(value) > hi:
            return True
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = props[k] if k in props else extra
            if sub is not True and _violates(v, sub, depth + 1):
                return True
    elif isinstance(value, list):
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if isinstance(lo, int) and len(value) < lo or isinstance(hi, int) and len(value) > hi:
            return True
        items = schema.get("items")
        if isinstance(items, (dict, bool)) and any(_violates(v, items, depth + 1) for v in value):
            return True
    for key in ("allOf", "anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            valid = sum(1 for o in options if not _violates(value, o, depth + 1))
            if (key == "allOf" and valid < len(options) or key == "anyOf" and valid == 0
                    or key == "oneOf" and valid != 1):
                return True
    if "not" in schema and not _violates(value, schema["not"], depth + 1):
        return True
    return False


def json_valid(completion: str, schema: dict | None = None, *, requested: bool = True) -> bool | None:
    """Whether the completion is the JSON that was asked for; ``None`` when JSON was not requested.

    Valid means: after stripping surrounding whitespace and one enclosing markdown fence
    (```` ```json ... ``` ````), the text parses as strict JSON (orjson: no NaN, no comments, no
    trailing commas, no trailing prose) whose top level is an object or array, and, when a
    ``schema`` is given, it validates against it. Schemas using only the common keywords (type,
    enum, const, required, properties, additionalProperties, items, min/max*, anyOf/oneOf/allOf/not,
    annotations: what structured-output schemas use) are checked natively by :func:`_violates`,
    exactly as ``jsonschema`` would and 5x faster; any other keyword (``$ref``, ``pattern`` ...)
    goes to ``jsonschema`` (draft from ``$schema``, else 2020-12). Without ``jsonschema`` installed
    those other keywords are ignored. An invalid schema judges nothing: then only the parse counts.

    Invariants: ``requested=False`` always gives ``None``; otherwise ``True`` or ``False``.
    Pass the result of :func:`json_requested` as ``requested`` and ``schema``; :func:`analyse` does.
    """
    if not requested:
        return None
    text = _strip_fence(completion)
    if not text or text[0] not in "{[":
        return False
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits, which are valid JSON: the stdlib decides
            value = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return False
    if not isinstance(value, (dict, list)):
        return False
    if not schema:
        return True
    how, validator = _judge(schema)
    if how == "none":
        return True
    if how == "jsonschema":
        return bool(validator.is_valid(value))
    try:
        return not _violates(value, schema)
    except RecursionError:  # pragma: no cover - absurdly deep output
        return False
