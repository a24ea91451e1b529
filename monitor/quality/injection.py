"""Jailbreak and prompt-injection attempts in a prompt: a small list of the common phrasings. Pure.

Not a classifier: a prompt that matches is an *attempt* by its wording ("ignore all previous
instructions", "you are DAN", "reveal your system prompt", "pretend you have no restrictions"),
whether or not it worked. One such prompt says little; the ``abuse`` check looks for clients whose
prompts match (or get refused) far more often than everyone else's (:mod:`monitor.checks.abuse`).
English, German, French and Spanish phrasings; case and spacing do not matter.
"""

from __future__ import annotations

import re

__all__ = ["PATTERNS", "is_injection", "matches"]

_PREV = r"(?:all\s+|any\s+|the\s+|your\s+|of\s+)*(?:previous|prior|above|earlier|preceding|initial|original|system)"
_RULES = r"(?:instructions?|prompts?|rules|directions|guidelines|messages?|context|programming|constraints)"

PATTERNS: dict[str, str] = {
    "ignore_previous": rf"\b(?:ignore|disregard|forget|override|skip)\s+{_PREV}\s+{_RULES}",
    "ignore_your_rules": r"\b(?:ignore|disregard|forget|bypass|override)\s+(?:all\s+|any\s+)?(?:of\s+)?your\s+"
                         r"(?:rules|guidelines|instructions|programming|restrictions|safety|filters?|policies|training)",
    "dan": r"\b(?:you\s+are|you're|act\s+as|become)\s+(?:now\s+)?(?:a\s+)?dan\b|\bdo\s+anything\s+now\b",
    "developer_mode": r"\b(?:developer|god|jailbreak|unrestricted|dan)\s+mode\s+(?:enabled|on|activated)"
                      r"|\benable\s+(?:developer|god|jailbreak)\s+mode\b",
    "no_restrictions": r"\b(?:pretend|imagine|act\s+as\s+if|assume)\b[^.?!\n]{0,40}\b(?:no|without|free\s+of)\s+"
                       r"(?:any\s+)?(?:restrictions|rules|limits|limitations|filters|guidelines|ethics|morals|"
                       r"censorship|content\s+polic(?:y|ies))",
    "unfiltered_persona": r"\b(?:act|respond|answer|behave)\s+as\s+(?:an?\s+)?(?:unfiltered|uncensored|unrestricted|"
                          r"amoral|unethical|evil)\b",
    "reveal_system_prompt": r"\b(?:reveal|print|show|repeat|output|leak|display|tell\s+me)\s+(?:me\s+)?(?:your|the)\s+"
                            r"(?:full\s+|entire\s+|hidden\s+|secret\s+|original\s+)?(?:system\s+prompt|initial\s+"
                            r"(?:prompt|instructions)|hidden\s+instructions|instructions\s+above)",
    "bypass_safety": r"\bbypass\s+(?:your\s+|the\s+|any\s+)?(?:safety|content|ethical|moderation)\s+"
                     r"(?:filters?|polic(?:y|ies)|guidelines|rules|checks)",
    "new_instructions": r"(?:^|\n)\s*(?:###\s*)?(?:new|updated|real)\s+(?:system\s+)?instructions?\s*:",
    "de": r"\b(?:ignoriere|vergiss|missachte)\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen)\s+"
          r"(?:anweisungen|regeln|instruktionen)",
    "fr": r"\bignore[rz]?\s+(?:toutes\s+)?(?:les\s+)?instructions\s+(?:pr[ée]c[ée]dentes|ci-dessus)",
    "es": r"\bignora\s+(?:todas\s+)?(?:las\s+)?instrucciones\s+(?:anteriores|previas)",
}
"""name -> regular expression (matched case-insensitively against the prompt)."""

_COMPILED = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in PATTERNS.items()]
_HINTS = ("ignor", "disregard", "forget", "overrid", "skip", "bypass", "dan", "mode", "pretend", "imagine",
          "act ", "assume", "respond", "answer", "behave", "reveal", "print", "show", "repeat", "output", "leak",
          "display", "tell", "instruction", "vergiss", "missachte")
_MAX_CHARS = 20_000


def matches(text: str) -> list[str]:
    """Names of the :data:`PATTERNS` the text matches (its first 20,000 characters)."""
    if not text:
        return []
    low = text[:_MAX_CHARS].lower()
    if not any(h in low for h in _HINTS):  # nearly every prompt stops here
        return []
    return [name for name, rx in _COMPILED if rx.search(low)]


def is_injection(text: str) -> bool:
    """Whether the text reads like a jailbreak or prompt-injection attempt."""
    return bool(matches(text))
