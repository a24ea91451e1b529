"""Enrichment: the quality signals of each model request, computed once, at ingest.

The quality columns of ``inference_events`` (languages and their mismatch,
refusal, empty, truncated, JSON validity, PII placeholders, repetition) are
filled here for the events :func:`~monitor.otlp.genai.wants_quality` selects
(captured output of a request that did not fail); :mod:`monitor.quality`
holds the detectors. One shape for the flags: :class:`~monitor.quality.QualityFlags` has the
event's quality columns under their own names (``EVENT_COLUMNS``), copied here. The ``injection`` flag
(:mod:`monitor.quality.injection`) is set for every event with a prompt, failed requests included.
"""

from __future__ import annotations

from monitor.events import InferenceEvent
from monitor.otlp.genai import wants_quality

__all__ = ["enrich", "warm_up"]


def warm_up() -> None:
    """Load the language model now (0.7 s), not on the first batch."""
    from monitor.quality import warm_up as _warm
    _warm()


def enrich(events: list[InferenceEvent]) -> int:
    """Fill the quality columns of ``events`` in place; returns how many were analysed."""
    from monitor import quality
    from monitor.quality.injection import flags as injection_flags

    prompted = [ev for ev in events if ev.prompt]  # an attempt is one whether or not the request failed
    for ev, flag in zip(prompted, injection_flags([ev.prompt for ev in prompted])):
        ev.injection = flag
    todo = [ev for ev in events if wants_quality(ev)]
    if not todo:
        return 0
    batch = getattr(quality, "analyse_batch", None)
    if batch is not None:
        flags = batch([(ev.prompt, ev.completion, ev.finish_reason, ev.attributes, ev.system_prompt) for ev in todo])
    else:
        flags = [quality.analyse(ev.prompt, ev.completion, ev.finish_reason, ev.attributes,
                                 system_prompt=ev.system_prompt) for ev in todo]
    for ev, q in zip(todo, flags):
        ev.prompt_language, ev.completion_language = q.prompt_language, q.completion_language
        ev.refusal, ev.empty_output, ev.truncated = int(q.refusal), int(q.empty_output), int(q.truncated)
        ev.json_valid = None if q.json_valid is None else int(q.json_valid)
        ev.pii_in_output = min(int(q.pii_in_output), 65535)
        ev.repetition = q.repetition
        ev.degenerate, ev.language_mismatch = int(q.degenerate), int(q.language_mismatch)
    return len(todo)
