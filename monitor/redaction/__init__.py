"""PII and secret redaction of prompt and completion content, in the sidecar, before data leaves the host.

``Redactor(settings.redaction)`` compiles the chosen detectors once;
``make_processor(redactor)`` is the receiver processor that applies
:func:`redact_request` to every accepted request (every string of a span or log
record but :data:`SAFE_KEYS`). Findings become typed placeholders: ``[EMAIL]``,
``[PHONE]``, ``[CARD]``, ``[IP]``, ``[API_KEY]``, ``[BEARER_TOKEN]``, ``[IBAN]``,
``[SSN]``, ``[NATIONAL_ID]``, ``[PASSPORT]``, ``[DATE_OF_BIRTH]``, ``[ADDRESS]``
and ``[NAME]`` for each custom rule. A content value longer
than ``redaction.max_value_bytes`` is cut first and counted as ``TRUNCATED``.
On x86-64 Linux a Hyperscan prefilter skips text no detector can match.
"""

from monitor.redaction.detectors import DETECTORS, KINDS, PRIORITY, Detector, luhn_ok
from monitor.redaction.redact import TRUNCATED, TRUNCATION_MARKER, Finding, Redactor
from monitor.redaction.request import (
    CONTENT_KEYS,
    CONTENT_PREFIXES,
    SAFE_KEYS,
    URL_KEYS,
    make_processor,
    redact_request,
)

__all__ = [
    "Redactor",
    "Finding",
    "redact_request",
    "make_processor",
    "Detector",
    "DETECTORS",
    "KINDS",
    "PRIORITY",
    "CONTENT_KEYS",
    "CONTENT_PREFIXES",
    "SAFE_KEYS",
    "URL_KEYS",
    "TRUNCATED",
    "TRUNCATION_MARKER",
    "luhn_ok",
]
