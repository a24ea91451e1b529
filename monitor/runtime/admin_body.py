"""Reading an admin request: its JSON object body, field by field, its query parameters and times.

Shared by the admin endpoint (:mod:`monitor.runtime.admin`) and its records-governance routes
(:mod:`monitor.runtime.records`); a request the endpoint cannot use raises :class:`BadRequest`,
which the endpoint answers with its status and ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from monitor.errors import ConfigError

__all__ = ["MAX_BODY_BYTES", "BadRequest", "STR", "STRS", "BOOL", "NUM", "read_object", "int_param", "parse_time"]

MAX_BODY_BYTES = 1024 * 1024
"""Larger request bodies are refused (413) before they are parsed."""


def parse_time(text: str) -> datetime:
    """ISO 8601 (naive times are UTC), or ``now``, or ``-2h`` / ``-30m`` relative to now."""
    from monitor.checks.windows import parse_duration

    text = text.strip()
    now = datetime.now(timezone.utc)
    if text == "now":
        return now
    if text.startswith("-"):
        try:
            return now - parse_duration(text[1:])
        except OverflowError:
            raise ConfigError(f"cannot read the time {text!r}: too far in the past") from None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"cannot read the time {text!r}: use ISO 8601 (2026-11-29T10:00) or -2h") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class BadRequest(Exception):
    """What was wrong with a request; answered ``status`` with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# field kinds of a request body: name -> (check, what it must be)
STR = (lambda v: isinstance(v, str), "a string")
STRS = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
BOOL = (lambda v: isinstance(v, bool), "true or false")
NUM = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a finite number")


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


async def read_object(request: web.Request, fields: dict[str, tuple], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object body, each field of its kind in ``fields`` (null: absent).
    An empty body is ``{}``. Raises :class:`BadRequest` saying what was wrong."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"the body is {request.content_length} bytes; at most {MAX_BODY_BYTES} are accepted", 413)
    raw = await request.read()  # over client_max_size (a chunked body): HTTPRequestEntityTooLarge
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(raw)
        except RecursionError:
            raise BadRequest("the body is not valid JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, not {_kind(body)}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; expected: {', '.join(fields)}")
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise BadRequest(f"missing field(s) {', '.join(map(repr, missing))}")
    for name, value in body.items():
        ok, what = fields[name]
        if value is not None and not ok(value):
            raise BadRequest(f"{name!r} must be {what}, not {_kind(value)}")
    return {k: v for k, v in body.items() if v is not None}


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.strip().isascii() or not text.strip().isdigit() or not lo <= int(text) <= hi:
        raise BadRequest(f"{name} must be a whole number from {lo} to {hi}, not {text[:50]!r}")
    return int(text)
