"""Quality signals of model responses, computed at ingest for every event.

:func:`analyse` is the single entry point: ``analyse(prompt, completion, finish_reason,
attributes)`` returns :class:`QualityFlags` (languages and their mismatch, refusal, empty output,
truncated, JSON requested/valid, PII in the output, repetition and degeneration);
:func:`analyse_batch` gives the same flags for a batch of events (each language once per distinct
text in the batch). Every detector is pure, needs nothing downloaded, and is bounded in cost per
event; call :func:`warm_up` once at startup to load the language model (0.7 s) ahead of the first
event.

One module per signal: :mod:`~monitor.quality.language` (and its model in
:mod:`~monitor.quality.language_id`), :mod:`~monitor.quality.refusal`, :mod:`~monitor.quality.emptiness`,
:mod:`~monitor.quality.truncation`, :mod:`~monitor.quality.json_output`, :mod:`~monitor.quality.pii`,
:mod:`~monitor.quality.repetition`; :mod:`~monitor.quality.analyse` runs them together.
"""

from monitor.quality.analyse import EVENT_COLUMNS, QUALITY_COLUMNS, QualityFlags, analyse, analyse_batch
from monitor.quality.emptiness import is_empty
from monitor.quality.json_output import json_requested, json_valid
from monitor.quality.language import language, language_mismatch, warm_up
from monitor.quality.pii import PLACEHOLDER_KINDS, pii_in_output
from monitor.quality.refusal import is_refusal
from monitor.quality.repetition import is_degenerate, repetition
from monitor.quality.truncation import TRUNCATION_REASONS, is_truncated

__all__ = [
    "QualityFlags",
    "QUALITY_COLUMNS",
    "EVENT_COLUMNS",
    "PLACEHOLDER_KINDS",
    "TRUNCATION_REASONS",
    "analyse",
    "analyse_batch",
    "language",
    "language_mismatch",
    "is_refusal",
    "is_empty",
    "is_truncated",
    "json_requested",
    "json_valid",
    "pii_in_output",
    "repetition",
    "is_degenerate",
    "warm_up",
]
