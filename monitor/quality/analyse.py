"""All quality signals of an inference event at once: :func:`analyse` and :func:`analyse_batch`.

The detectors run at ingest on every :class:`~monitor.events.InferenceEvent`.

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

import operator
from dataclasses import dataclass, fields
from itertools import repeat
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from monitor.quality import language_id
from monitor.quality.emptiness import is_empty
from monitor.quality.json_output import json_requested, json_valid
from monitor.quality.language import language_mismatch
from monitor.quality.pii import pii_in_output
from monitor.quality.refusal import is_refusal as _is_refusal
from monitor.quality.repetition import _NO_REPETITION, _degenerate, _repetition
from monitor.quality.truncation import TRUNCATION_REASONS, is_truncated

if TYPE_CHECKING:
    from monitor.redaction import Redactor

__all__ = ["QualityFlags", "QUALITY_COLUMNS", "EVENT_COLUMNS", "analyse", "analyse_batch"]


@dataclass(frozen=True, slots=True)
class QualityFlags:
    """The quality columns of one inference event, as :func:`analyse` fills them (immutable: equal
    flags from :func:`analyse` may be one shared instance).

    One shape with the event: every field but ``json_requested`` is a field of
    :class:`~monitor.events.InferenceEvent` and a column of ``inference_events`` of the same name
    (:data:`EVENT_COLUMNS`; booleans are stored as 0/1), which ingest copies onto the event."""

    prompt_language: str
    """ISO 639-1 of the prompt, ``""`` when unsure."""
    completion_language: str
    """ISO 639-1 of the completion, ``""`` when unsure."""
    language_mismatch: bool
    refusal: bool
    empty_output: bool
    """The completion holds no content (nothing, whitespace, only markup or punctuation)."""
    truncated: bool
    json_requested: bool
    """Whether the request asked for JSON output (decides ``json_valid``; not stored)."""
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
EVENT_COLUMNS: tuple[str, ...] = tuple(name for name in QUALITY_COLUMNS if name != "json_requested")
"""The fields that are also :class:`~monitor.events.InferenceEvent` fields and ``inference_events``
columns, under the same names."""


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
