"""Quality detectors run at ingest on every :class:`~monitor.events.InferenceEvent`.

Every function here is pure (no I/O, no clock, no randomness, nothing downloaded) and
total: any ``str`` is accepted, nothing raises on odd input. They are meant to run for every
event at ingest time, so each is bounded in cost by a fixed prefix or suffix of the text, not
by its length (see each docstring); :func:`analyse` runs them all, sharing work, and
:func:`analyse_batch` runs it over a batch. On chat events of ~700 characters that is about 250,000
machine instructions (50-70 us of CPU on a 2-core development VM), a third of what the detectors cost
before their fast paths: cheap C-level checks decide first and the costly steps run only where
they could change an answer (``bench/quality.py`` measures both; the previous implementation,
tests/quality_reference, is kept to check that every flag is the same). Call
:func:`warm_up` once at startup.

Content arrives redacted (``monitor.redaction``): PII became ``[EMAIL]``, ``[PHONE]`` ...
The detectors treat those placeholders as non-words (language), as content (emptiness) and
count them in completions (:func:`pii_in_output`).

Libraries: language identification uses py3langid's bundled model (restricted per script,
see :mod:`monitor.quality.language_id`); JSON uses orjson (strict RFC 8259) and, for schemas,
a native check of the common keywords, ``jsonschema`` for the rest (see :func:`json_valid`).
"""

from __future__ import annotations

import json
import operator
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, fields
from itertools import repeat
from operator import ne
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import orjson

from monitor.quality import language_id
from monitor.quality.refusal import is_refusal as _is_refusal

if TYPE_CHECKING:
    from monitor.redaction import Redactor

__all__ = [
    "QualityFlags", "QUALITY_COLUMNS", "PLACEHOLDER_KINDS", "TRUNCATION_REASONS",
    "language", "is_refusal", "is_empty", "is_truncated", "json_requested", "json_valid",
    "pii_in_output", "repetition", "is_degenerate", "language_mismatch", "analyse", "analyse_batch", "warm_up",
]

# =============================================================================== language


def warm_up() -> bool:
    """Load the language model (about 0.7 s, once per process) now rather than on the first event
    that needs it; call it when ingest starts. True when py3langid is available."""
    return language_id.warm_up()


def language(text: str) -> str:
    """ISO 639-1 code of the language ``text`` is written in, or ``""`` when unsure.

    Invariants: the answer is ``""`` or one of :data:`monitor.quality.language_id.LANGUAGES`;
    ``""`` when the prose (code blocks, inline code, URLs, numbers, placeholders and code-like
    lines removed) has fewer than 3 words (4 Han/kana/Hangul characters) or py3langid's
    probability is below 0.6. Only the first ~200 prose characters are read. Deterministic.
    """
    return language_id.detect(text)


_TRANSLATION_CUE = re.compile(
    r"translat|übersetz|tradu[isz]|traduc|vertaal|tłumacz|перевед|перевод|çevir|ترجم|翻[译訳]|번역"
    r"|\b(?:in|into|to)\s+(?:english|german|french|spanish|italian|portuguese|dutch|polish|russian|chinese"
    r"|japanese|korean|arabic|turkish)\b"
    r"|\b(?:auf|in)\s+(?:deutsch|englisch|französisch|spanisch|italienisch)\b"
    r"|\ben\s+(?:français|anglais|allemand|espagnol|italien)\b|\ben\s+(?:inglés|español|francés|alemán)\b"
    r"|\bin\s+(?:inglese|italiano|tedesco|francese)\b|\bem\s+(?:inglês|português)\b"
    r"|\bop\s+(?:engels|nederlands)\b|\bin\s+het\s+(?:engels|nederlands|duits|frans)\b"
    r"|\bpo\s+(?:angielsku|polsku)\b|\bпо-(?:английски|русски)\b|用(?:英文|英语|中文|日语)|(?:英語|日本語)で")
"""Asking for a translation or naming the output language; matched on lower-cased text."""
_CUE_CHARS = 300
"""Translation requests and "answer in English" stand at the start or the end of a prompt."""


_CUE_GATE = ("transl", "übersetz", "tradu", "vertaal", "tłumacz", "перев", "çevir", "ترجم", "翻", "번역", "engl",
             "germ", "fren", "span", "ital", "portug", "dutch", "polish", "russ", "chin", "japan", "korea", "arab",
             "turk", "deutsch", "franç", "franz", "anglais", "allemand", "espagnol", "inglé", "españ", "francé",
             "alemán", "ingle", "tedesco", "inglê", "nederl", "duits", "frans", "angiel", "polsk", "англ", "русск",
             "英", "中文", "日语", "日本語")
"""Substrings one of which every :data:`_TRANSLATION_CUE` match contains (``in`` is far cheaper)."""


def _asks_for_language(text: str) -> bool:
    if len(text) > 2 * _CUE_CHARS:
        text = text[:_CUE_CHARS] + "\n" + text[-_CUE_CHARS:]
    text = text.lower()
    if not any(g in text for g in _CUE_GATE):
        return False
    return _TRANSLATION_CUE.search(text) is not None


def language_mismatch(prompt: str, completion: str, *, prompt_language: str | None = None,
                      completion_language: str | None = None, instructions: str = "") -> bool:
    """True when prompt and completion are both in a known language and the languages differ.

    Invariants: False whenever either language is ``""`` (short texts, pure code: code blocks are
    never read), and False when the prompt or ``instructions`` (the system prompt) ask for a
    translation or name an output language ("translate", "auf Deutsch", "in English", "用英文")
    in their first or last 300 characters: then a different language is what was asked for.
    Languages already computed can be passed in (:func:`analyse` does) to save the work.
    """
    lp = language(prompt) if prompt_language is None else prompt_language
    if not lp:
        return False
    lc = language(completion) if completion_language is None else completion_language
    if not lc or lc == lp:
        return False
    return not (_asks_for_language(prompt) or instructions and _asks_for_language(instructions))


# =============================================================================== refusal


def is_refusal(completion: str) -> bool:
    """True when the completion declines the request ("I'm sorry, but I can't help with that",
    "Ich kann Ihnen dabei leider nicht helfen", "抱歉，我无法...", "お答えできません").

    Invariants: only the first two sentences (at most 360 characters) are read, so the cost is
    bounded and an "I can't ..." deep inside an answer never counts. Patterns need a first-person
    negated modal plus a verb of helping/producing, or an explicit formula ("I must decline",
    "as an AI language model, I cannot"); idioms ("I can't wait", "I can't help but notice"),
    hedges ("I can't give you an exact figure"), conditions ("without the order number"),
    partial help ("..., but here is") and quoted phrases do not count. Languages: en, de, fr,
    es, it, pt, nl, zh, ja, ko, ru, pl, tr, ar. See :mod:`monitor.quality.refusal`.
    """
    return _is_refusal(completion)


# =============================================================================== empty, truncated

_CONTENT_CHAR = re.compile(r"[^\W_]")  # a letter or digit, any script


def is_empty(completion: str) -> bool:
    """True when the completion has no content: empty, or only whitespace, punctuation,
    control/format characters (zero-width spaces) and math/currency/modifier symbols
    (```` ``` ````, ``---``, ``**``, ``{}``).

    Invariants: any letter or digit in any script, or any "other symbol" (emoji, ``©``), is
    content; a redaction placeholder (``[EMAIL]``) is content. Cost: C-level scans (and a look at
    the distinct characters of a text without letters or digits).
    """
    if not completion or completion.isspace():
        return True
    if completion[:1].isalnum() or _CONTENT_CHAR.search(completion) is not None:  # [^\W_] is isalnum()
        return False
    if completion.isascii():  # ASCII has no "other symbols"
        return True
    return not any(unicodedata.category(c) == "So" for c in set(completion))


TRUNCATION_REASONS: frozenset[str] = frozenset({
    "length",             # OpenAI chat/completions, vLLM, TGI, SGLang, llama.cpp
    "max_tokens",         # Anthropic, Bedrock, Gemini (MAX_TOKENS), Cohere
    "max_output_tokens",  # OpenAI Responses API (incomplete_details.reason)
    "max_length", "model_length", "token_limit", "max_new_tokens",
})
"""Finish reasons meaning "stopped because the token budget ran out" (compared lower-cased)."""


def is_truncated(finish_reason: str) -> bool:
    """True when ``finish_reason`` says the output hit its token limit.

    Invariants: case- and whitespace-insensitive; a ``FINISH_REASON_`` prefix (Gemini's proto
    enum names) and a JSON list (``["length"]``, as ``gen_ai.response.finish_reasons`` is
    stored) are understood; any other value, and ``""``, is False.
    """
    if not finish_reason:
        return False
    r = finish_reason.strip().lower()
    if r.startswith("["):
        try:
            reasons = orjson.loads(r)
        except orjson.JSONDecodeError:
            return False
        return isinstance(reasons, list) and any(isinstance(x, str) and is_truncated(x) for x in reasons)
    if r.startswith("finish_reason_"):
        r = r[len("finish_reason_"):]
    return r in TRUNCATION_REASONS


# =============================================================================== JSON

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


# =============================================================================== PII in output

PLACEHOLDER_KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IP", "API_KEY", "BEARER_TOKEN")
"""The built-in redaction placeholders (``monitor.redaction.KINDS``; a test keeps them in step)."""

_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(sorted(PLACEHOLDER_KINDS, key=len, reverse=True)) + r")\]")
_CUSTOM_PLACEHOLDERS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _placeholder_pattern(redactor: "Redactor | None") -> re.Pattern[str]:
    if redactor is None:
        return _PLACEHOLDER
    kinds = tuple(sorted(set(PLACEHOLDER_KINDS) | set(redactor.kinds), key=len, reverse=True))
    rx = _CUSTOM_PLACEHOLDERS.get(kinds)
    if rx is None:
        rx = re.compile(r"\[(?:" + "|".join(map(re.escape, kinds)) + r")\]")
        _CUSTOM_PLACEHOLDERS[kinds] = rx
    return rx


def pii_in_output(completion: str, redactor: "Redactor | None" = None) -> int:
    """How many pieces of PII or secrets the completion contains.

    Counts redaction placeholders (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IP]``, ``[API_KEY]``,
    ``[BEARER_TOKEN]``, plus the custom rule names of ``redactor``): content is redacted before
    storage, so a placeholder in the *output* means the model produced PII. With a ``redactor``,
    raw (unredacted) text is scanned too and its findings are added; the redactor never matches
    a placeholder, so nothing is counted twice.

    Invariants: >= 0; 0 for text without ``[`` and no redactor (a C-level check). A model that
    writes a literal ``[EMAIL]`` template, or echoes the user's own address, counts too: the
    stored text cannot tell these apart.
    """
    if not completion:
        return 0
    n = 0
    if "[" in completion:
        n = sum(1 for _ in _placeholder_pattern(redactor).finditer(completion))
    if redactor is not None:
        n += len(redactor.scan(completion))
    return n


# =============================================================================== repetition

REPETITION_WINDOW = 2400
"""Final characters whose word n-grams :func:`repetition` counts."""
LOOP_WINDOW = 16000
"""Final characters searched for a trailing loop (C-level string operations only), so that a long
paragraph repeated until the token limit is seen 3+ times."""
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_SENTENCE = re.compile(r"[。！？!?\n]+")
_DIGIT_RUN = re.compile(r"\d+")
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")
_MEANINGFUL = re.compile(r"[^\W_]|[^\s\w!-/:-@\[-`{-~\u2000-\u206f\u3000-\u303f\uff00-\uff0f]")
"""A letter, digit or symbol such as an emoji: a loop of only dashes, dots or spaces is layout."""
_NGRAM = 10
"""Word n-grams: long enough that tables, CSV, code and song choruses stay well below 0.5."""
_MIN_GRAMS = 24
_COUNTER_PROBE = 600
"""A counter loop is first looked for in this many final characters (then in the whole window)."""
_DIGITS_AS_ZERO = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))
_RUN_OF_REPEATS = b"\x01" * _NGRAM


@dataclass(frozen=True, slots=True)
class _Repetition:
    score: float
    """max(dup_share, loop_share), in [0, 1]."""
    dup_share: float
    """Share of word 10-grams (CJK: of sentence characters) that repeat an earlier one."""
    loop_share: float
    """Share of the loop window (:data:`LOOP_WINDOW`) that is the trailing periodic run."""
    loop_reps: float
    """How many times the trailing unit repeats."""
    loop_unit: int
    """Length in characters of the repeating unit (0 when there is no loop)."""
    counter_loop: bool
    """The loop only repeats once numbers are ignored ("Step 5: repeat step 4." "Step 6: ...")."""


_NO_REPETITION = _Repetition(0.0, 0.0, 0.0, 0.0, 0, False)


def _tail_loop(s: str) -> tuple[int, int]:
    """``(start, period)`` of the longest periodic suffix of ``s`` whose unit repeats (about) 3+ times;
    ``(len(s), 0)`` when there is none.

    Candidate periods come from earlier occurrences of the last few characters (C-level ``rfind``,
    at most 6 of them); the start of the periodic run is found by binary search on
    ``s[a:n-p] == s[a+p:n]``, which holds for every ``a`` from the run's start on.
    """
    n = len(s)
    if n < 12:
        return n, 0
    probe_len = 8 if n >= 40 else 4
    probe = s[n - probe_len:]
    best_start, best_p = n, 0
    hi = n - 1
    for _ in range(6):
        j = s.rfind(probe, 0, hi)
        if j < 0:
            break
        p = n - probe_len - j
        hi = j + probe_len - 1
        if 29 * p > 10 * n:  # farther back, periods only grow: no room for 3 units any more
            break
        if s[n - 2 * p:n - p] != s[n - p:]:
            continue
        lo_a, hi_a = 0, n - 2 * p  # s[a:n-p] == s[a+p:n] holds at hi_a; find the least such a
        while lo_a < hi_a:
            mid = (lo_a + hi_a) // 2
            if s[mid:n - p] == s[mid + p:n]:
                hi_a = mid
            else:
                lo_a = mid + 1
        if (n - lo_a) * 10 >= 29 * p and lo_a < best_start:  # 3 units, give or take a stripped space
            best_start, best_p = lo_a, p
    return best_start, best_p


def _counter_loop(s: str) -> tuple[int, int, str]:
    """A trailing loop once digit runs are folded to ``0``, whose unit has 4+ letters and at most
    two numbers (so table rows, listings and dates never are one): ``(start, period, folded s)``,
    else ``(0, 0, "")``. Looked for in the last :data:`_COUNTER_PROBE` characters first; only a
    loop found there makes the whole window be folded and measured."""
    raw = s[-_COUNTER_PROBE:]
    pieces = _DIGIT_RUN.split(raw[-80:])
    anchor = max(pieces, key=len)
    if len(anchor) < 4 or raw.count(anchor) < 3:
        return 0, 0, ""  # the text between the last numbers does not recur: no counter loop (cheap exit)
    tail = _DIGIT_RUN.sub("0", raw)
    start, p = _tail_loop(tail)
    if not p:
        return 0, 0, ""
    unit = tail[len(tail) - p:]
    if unit.count("0") > 2 or len(_LETTER.findall(unit)) < 4:
        return 0, 0, ""
    if len(s) <= _COUNTER_PROBE:
        return start, p, tail
    folded = _DIGIT_RUN.sub("0", s)
    start, p = _tail_loop(folded)
    return (start, p, folded) if p else (0, 0, "")


def _has_digit(s: str) -> bool:
    """``_DIGIT.search(s) is not None``; for ASCII text (where ``\\d`` is 0-9) a translate and a
    memchr (``bytes.find``: ``in`` on bytes first tries its operand as an integer, an exception)."""
    if s.isascii():
        return s.encode().translate(_DIGITS_AS_ZERO).find(b"0") >= 0
    return _DIGIT.search(s) is not None


def _may_repeat(tokens: list[str]) -> bool:
    """False when no word 10-gram of ``tokens`` can repeat an earlier one, so that the n-gram set need
    not be built (it is the costliest step on ordinary prose); True when one may.

    The later copy of a repeated 10-gram is 10 consecutive tokens that each occurred before. So there
    must be 10+ repeated tokens in all (one set), and then a run of 10 of them (first occurrences
    from one dict.setdefault pass). Ordinary answers fail one of the two; all C-level work.
    """
    n = len(tokens)
    if n - len(set(tokens)) < _NGRAM:
        return False
    first: dict[str, int] = {}
    seen_before = bytes(map(ne, map(first.setdefault, tokens, range(n)), range(n)))
    return seen_before.find(_RUN_OF_REPEATS) >= 0  # (bytes ``in`` first tries an int: an exception)


def _cjk_dup(s: str) -> float:
    """Share of sentence characters (CJK sentences, no spaces to split words) repeating an earlier sentence."""
    seen: set[str] = set()
    dup = total = 0
    for sentence in _CJK_SENTENCE.split(s):
        sentence = sentence.strip()
        if len(sentence) < 4:
            continue
        total += len(sentence)
        if sentence in seen:
            dup += len(sentence)
        else:
            seen.add(sentence)
    return dup / total if total >= 60 else 0.0


def _repetition(text: str) -> _Repetition:
    if not text:
        return _NO_REPETITION
    s = (text[-LOOP_WINDOW:] if len(text) > LOOP_WINDOW else text).rstrip()
    n = len(s)
    if n < 12:
        return _NO_REPETITION
    # 1. a loop at the end: the same unit (a word, a sentence, "abc", an emoji) over and over
    start, p = _tail_loop(s)
    counter = False
    if p and _MEANINGFUL.search(s, n - p, n) is None:
        p = 0  # "-----", "....": layout, not a loop
    if not p and _has_digit(s[-200:]):
        # "Step 5: Repeat step 4." "Step 6: Repeat step 5." ...: a loop once numbers are folded
        start, p, folded = _counter_loop(s)
        if p:
            s, n, counter = folded, len(folded), True
    loop_share = loop_reps = 0.0
    if p:
        loop_share = (n - start) / n
        loop_reps = (n - start) / p
    # 2. repeated word 10-grams anywhere (a loop that stopped, an answer given three times)
    if n > REPETITION_WINDOW:
        s, n = s[-REPETITION_WINDOW:], REPETITION_WINDOW
    tokens = s.split()
    dup = 0.0
    if len(tokens) * 12 < n and _CJK.search(s) is not None:
        dup = _cjk_dup(s)  # Chinese/Japanese: no spaces between words
    elif len(tokens) >= _NGRAM + _MIN_GRAMS and _may_repeat(tokens):
        grams = len(tokens) - _NGRAM + 1
        dup = 1.0 - len(set(zip(*(tokens[i:] for i in range(_NGRAM))))) / grams
    if not p and not dup:
        return _NO_REPETITION  # the same values; most answers end here
    score = max(dup, loop_share)
    return _Repetition(round(min(1.0, score), 4), round(dup, 4), round(loop_share, 4), round(loop_reps, 2),
                       p, counter)


def repetition(completion: str) -> float:
    """How repetitive the completion is, in [0, 1]: the larger of

    - the share of word 10-grams (whitespace-separated tokens) that repeat an earlier 10-gram; for
      Chinese/Japanese text (no spaces) the share of sentence characters repeating an earlier
      sentence; and
    - the share of the text taken by a trailing loop: the longest suffix in which one unit (a
      word, a line, a paragraph, ``abc``, an emoji; not layout such as ``----``) repeats 3+ times,
      or, with numbers ignored, a counter loop ("Step 5: Repeat step 4." "Step 6: ...").

    Invariants: 0.0 for texts under 12 characters; normal prose scores under ~0.05, tables, code
    and song choruses under ~0.35, an answer given twice just under 0.5; a completion that loops
    until it is cut off scores near 1. Bounded: loops are looked for in the last 16,000 characters,
    n-grams counted in the last 2,400 (loops run to the end of an output). Language-agnostic; no
    tokenizer, no model.
    """
    return _repetition(completion).score


def _degenerate(r: _Repetition) -> bool:
    if r.counter_loop:
        return r.loop_reps >= 8 and r.loop_share >= 0.5
    if r.loop_unit:
        # a short unit 10+ times, a phrase 4+ times over a third of the text, or a long unit 3+ times
        if r.loop_reps >= 10 and r.loop_unit * r.loop_reps >= 40:
            return True
        if r.loop_reps >= 4 and r.loop_share >= 0.3 and r.loop_unit * r.loop_reps >= 60:
            return True
        if r.loop_reps >= 3 and r.loop_unit >= 40 and r.loop_share >= 0.5:
            return True
    return r.dup_share >= 0.5


def is_degenerate(completion: str) -> bool:
    """True when the completion is stuck in a loop (see :func:`repetition`).

    Any of: a unit repeating at the end of the text (a short unit 10+ times over 40+ characters; a
    phrase 4+ times over a third of the text and 60+ characters; a unit of 40+ characters 3+ times
    over half of it); a counter loop ("Step 5: Repeat step 4." ...; numbers ignored) 8+ times over
    half of the text; or half of the 10-grams being repeats (a loop that stopped, an answer given
    three times). An answer given exactly twice (two identical choices joined) stays just below.
    """
    return _degenerate(_repetition(completion))


# =============================================================================== all together


@dataclass(frozen=True, slots=True)
class QualityFlags:
    """The quality columns of one inference event, as :func:`analyse` fills them (immutable: equal
    flags from :func:`analyse` may be one shared instance)."""

    prompt_language: str
    """ISO 639-1 of the prompt, ``""`` when unsure."""
    completion_language: str
    """ISO 639-1 of the completion, ``""`` when unsure."""
    language_mismatch: bool
    refusal: bool
    empty: bool
    truncated: bool
    json_requested: bool
    json_valid: bool | None
    """None when JSON was not requested."""
    pii_in_output: int
    repetition: float
    degenerate: bool

    def row(self) -> tuple:
        """Values in :data:`QUALITY_COLUMNS` order."""
        return tuple(getattr(self, name) for name in QUALITY_COLUMNS)


QUALITY_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(QualityFlags))
"""Field names of :class:`QualityFlags`, in order."""


_new = object.__new__
_FLAG_SETTERS = tuple(getattr(QualityFlags, name).__set__ for name in QUALITY_COLUMNS)
_SHARED_FLAGS: dict[tuple, QualityFlags] = {}
_SHARED_MAX = 4096


def _flags(values: tuple) -> QualityFlags:
    """``QualityFlags(*values)``, shared: the flags are immutable and most events have one of a few
    combinations (languages, booleans, 0 PII, 0.0 repetition), so equal values give one instance,
    kept in a table of at most :data:`_SHARED_MAX` (then new combinations are simply built). Each field
    has one type (``False`` is never ``0`` here), so equal tuples mean equal flags. Built without the
    frozen dataclass's ``__init__``, which sets each field through ``object.__setattr__``."""
    flags = _SHARED_FLAGS.get(values)
    if flags is None:
        flags = _new(QualityFlags)
        for _ in map(operator.call, _FLAG_SETTERS, repeat(flags), values):
            pass
        if len(_SHARED_FLAGS) < _SHARED_MAX:
            _SHARED_FLAGS[values] = flags
    return flags


_FINISH_REASONS: dict[str, bool] = {
    r: is_truncated(r) for r in (*TRUNCATION_REASONS, "", "stop", "end_turn", "stop_sequence", "tool_calls",
                                 "tool_use", "function_call", "content_filter", "eos", "eos_token", "abort",
                                 "error", "STOP", "MAX_TOKENS", "LENGTH", "FINISH_REASON_STOP",
                                 "FINISH_REASON_MAX_TOKENS", '["stop"]', '["length"]', '["tool_calls"]',
                                 '["end_turn"]', '["max_tokens"]', '["content_filter"]')}
""":func:`is_truncated` of the usual finish reasons, computed once (it is pure)."""


def _analyse(prompt: str, completion: str, finish_reason: str, attributes: dict[str, str] | None,
             system_prompt: str, redactor: "Redactor | None", detect: Callable[[str], str]) -> QualityFlags:
    prompt = prompt or ""
    completion = completion or ""
    requested, schema = json_requested(attributes) if attributes else (False, None)
    empty = is_empty(completion)
    lp = detect(prompt)
    if empty:
        lc, refusal, rep = "", False, _NO_REPETITION
    else:
        lc = detect(completion)
        refusal = _is_refusal(completion)
        rep = _repetition(completion)
    mismatch = bool(lp and lc and lp != lc) and language_mismatch(
        prompt, completion, prompt_language=lp, completion_language=lc, instructions=system_prompt)
    truncated = _FINISH_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    if truncated is None:
        truncated = is_truncated(finish_reason)
    return _flags((
        lp, lc, mismatch, refusal, empty, truncated, requested,
        json_valid(completion, schema, requested=True) if requested else None,
        pii_in_output(completion, redactor) if "[" in completion or redactor is not None else 0,
        rep.score,
        rep is not _NO_REPETITION and _degenerate(rep),
    ))


def analyse(prompt: str, completion: str, finish_reason: str = "", attributes: dict[str, str] | None = None,
            *, system_prompt: str = "", redactor: "Redactor | None" = None) -> QualityFlags:
    """All detectors for one event, sharing work (each language is computed once). The single
    entry point for ingest: pure, never raises on ``str`` input, bounded cost per event.

    An empty completion is neither a refusal, nor degenerate, nor in a language. ``system_prompt``
    only serves :func:`language_mismatch` (an "answer in English" instruction); ``redactor`` makes
    :func:`pii_in_output` scan raw text as well (only for content that was not redacted).
    """
    return _analyse(prompt, completion, finish_reason, attributes, system_prompt, redactor, language_id.detect)


def analyse_batch(items: Iterable[Sequence[Any]], *, redactor: "Redactor | None" = None) -> list[QualityFlags]:
    """:func:`analyse` for many events: ``[analyse(*item, redactor=redactor) for item in items]``, where
    each item is ``(prompt, completion[, finish_reason[, attributes[, system_prompt]]])``.

    Same flags, in order. Within the batch each language is identified once per distinct text (the
    answer depends only on a text's first :data:`~monitor.quality.language_id.SAMPLE_CHARS` * 4
    characters, the key: a prompt template, a pasted context or a canned refusal repeated across
    events costs one lookup). The memo lives as long as the call: no state between batches.
    """
    memo: dict[str, str] = {}
    prefix = language_id.PREFIX_CHARS
    detect = language_id.detect

    def cached(text: str) -> str:
        key = text[:prefix] if len(text) > prefix else text
        lang = memo.get(key)
        if lang is None:
            lang = memo[key] = detect(key)
        return lang

    out = []
    for item in items:
        prompt, completion, *rest = item
        finish_reason = rest[0] if rest else ""
        attributes = rest[1] if len(rest) > 1 else None
        system_prompt = rest[2] if len(rest) > 2 else ""
        out.append(_analyse(prompt, completion, finish_reason, attributes, system_prompt, redactor, cached))
    return out
