"""Quality signals of model responses, computed at ingest for every event.

:func:`analyse` is the single entry point: ``analyse(prompt, completion, finish_reason,
attributes)`` returns :class:`QualityFlags` (languages and their mismatch, refusal, empty,
truncated, JSON requested/valid, PII in the output, repetition and degeneration);
:func:`analyse_batch` gives the same flags for a batch of events (each language once per distinct
text in the batch). Every detector is pure, needs nothing downloaded, and is bounded in cost per
event; call :func:`warm_up` once at startup to load the language model (0.7 s) ahead of the first
event.
"""

from monitor.quality.detectors import (
    PLACEHOLDER_KINDS,
    QUALITY_COLUMNS,
    TRUNCATION_REASONS,
    QualityFlags,
    analyse,
    analyse_batch,
    is_degenerate,
    is_empty,
    is_refusal,
    is_truncated,
    json_requested,
    json_valid,
    language,
    language_mismatch,
    pii_in_output,
    repetition,
    warm_up,
)

__all__ = [
    "QualityFlags",
    "QUALITY_COLUMNS",
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
