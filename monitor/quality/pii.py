"""PII in the output: redaction placeholders (and, with a redactor, raw findings) in a completion. Pure."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.redaction import Redactor

__all__ = ["PLACEHOLDER_KINDS", "pii_in_output"]


PLACEHOLDER_KINDS: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IP", "API_KEY", "BEARER_TOKEN", "IBAN", "SSN",
                                     "NATIONAL_ID", "PASSPORT", "DATE_OF_BIRTH", "ADDRESS")
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
