"""Jailbreak and prompt-injection attempts in a prompt: a small list of the common phrasings. Pure.

Not a classifier: a prompt that matches is an *attempt* by its wording ("ignore all previous
instructions", "you are DAN", "reveal your system prompt", "pretend you have no restrictions"),
whether or not it worked. One such prompt says little; the ``abuse`` check looks for clients whose
prompts match (or get refused) far more often than everyone else's (:mod:`monitor.checks.abuse`).
English, German, French and Spanish phrasings; case and spacing do not matter.

The answer is defined by the regular expressions alone: a pattern of :data:`PATTERNS` is reported when
it matches (``re.IGNORECASE``) the lowered first 20,000 characters of the text. Nearly no prompt is an
attempt, so the regexes run only where they could match: :data:`LITERALS` gives, per pattern, groups of
literals of which every match holds one of each group (they are the pattern's own words), and
:func:`matches_batch` searches the first group once in the whole batch's text (a C substring search,
about 0.3 µs a literal per 350-character prompt) before anything runs per text.
"""

from __future__ import annotations

import re
from bisect import bisect_right

__all__ = ["LITERALS", "PATTERNS", "flags", "is_injection", "matches", "matches_batch"]

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

LITERALS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ignore_previous": (("ignor", "disregard", "forget", "overrid", "skip"),
                        ("previous", "prior", "above", "earlier", "preceding", "initial", "original", "system"),
                        ("instruction", "prompt", "rules", "directions", "guidelines", "message", "context",
                         "programming", "constraints")),
    "ignore_your_rules": (("ignor", "disregard", "forget", "bypass", "overrid"), ("your",),
                          ("rules", "guidelines", "instructions", "programming", "restrictions", "safety", "filter",
                           "policies", "training")),
    "dan": (("dan", "anything"), ("you", "act", "become", "anything")),
    "developer_mode": (("mode",), ("developer", "god", "jailbreak", "unrestricted", "dan")),
    "no_restrictions": (("restrict", "rules", "limit", "filter", "guidelines", "ethic", "moral", "censor", "polic"),
                        ("pretend", "imagin", "act", "assum"), ("no", "without", "free")),
    "unfiltered_persona": (("filter", "censor", "restrict", "moral", "ethic", "evil"),
                           ("act", "respond", "answer", "behave"), ("as",)),
    "reveal_system_prompt": (("prompt", "instruction"),
                             ("reveal", "print", "show", "repeat", "output", "leak", "display", "tell"),
                             ("your", "the")),
    "bypass_safety": (("bypass",), ("safety", "content", "ethical", "moderation"),
                      ("filter", "polic", "guidelines", "rules", "checks")),
    "new_instructions": (("instruction",), (":",), ("new", "updated", "real")),
    "de": (("ignor", "vergiss", "missachte"), ("vorherigen", "bisherigen", "obigen"),
           ("anweisungen", "regeln", "instruktionen")),
    "fr": (("ignor",), ("instructions",), ("dessus", "dentes")),
    "es": (("ignor",), ("instrucciones",), ("anteriores", "previas")),
}
"""name -> groups of literals: every match of the pattern (in the lowered text, with :data:`FOLD` applied)
contains at least one literal of each group. Each literal is a word the pattern spells out in that place,
or a part of it (``restrict`` for ``restrictions`` and ``unrestricted``), so this follows from the pattern's
text. The first group is the gate searched for in the whole batch: the rarest words, and few distinct ones
(each costs a pass over the batch's text). ``tests/test_quality_injection.py`` holds every pattern to it."""

FOLD = {0x131: "i", 0x17F: "s"}
"""The characters a lowered text can hold that ``re.IGNORECASE`` matches to an ASCII letter other than
themselves (dotless ı ~ i, long ſ ~ s): folded before literals are sought, so that a literal check never
says "cannot match" where the regex would match."""

_MAX_CHARS = 20_000
_COMPILED = {name: re.compile(rx, re.IGNORECASE) for name, rx in PATTERNS.items()}
_CHECKS = tuple((name, _COMPILED[name], groups[1:]) for name, groups in LITERALS.items())
_GATES: dict[str, tuple[int, ...]] = {}
"""gate literal -> indexes (into _CHECKS) of the patterns whose first group holds it."""
for _i, (_name, _groups) in enumerate(LITERALS.items()):
    for _lit in _groups[0]:
        _GATES[_lit] = _GATES.get(_lit, ()) + (_i,)


def _folded(low: str) -> str:
    if low.isascii() or ("ı" not in low and "ſ" not in low):
        return low
    return low.translate(FOLD)


def matches_batch(texts: list[str]) -> list[list[str]]:
    """:func:`matches` of each text (same answers, in order): the gate literals are searched once in the
    batch's joined lowered text, and only the texts holding one are checked further."""
    out: list[list[str]] = [[] for _ in texts]
    if not texts:
        return out
    lows = [t[:_MAX_CHARS].lower() if t else "" for t in texts]
    folded = [_folded(low) for low in lows]
    joined = "\n".join(folded)  # no literal holds a "\n": none can run across two texts
    starts = []
    pos = 0
    for f in folded:
        starts.append(pos)
        pos += len(f) + 1
    todo: dict[int, set[int]] = {}  # text -> patterns whose gate it holds
    for lit, pats in _GATES.items():
        at = joined.find(lit)  # the usual case: -1 after one C-level search over the batch
        while at >= 0:
            i = bisect_right(starts, at) - 1
            todo.setdefault(i, set()).update(pats)
            nxt = i + 1
            at = joined.find(lit, starts[nxt]) if nxt < len(starts) else -1
    for i, pats in todo.items():
        low, f = lows[i], folded[i]
        out[i] = [name for k, (name, rx, groups) in enumerate(_CHECKS) if k in pats
                  and all(any(lit in f for lit in group) for group in groups) and rx.search(low)]
    return out


def flags(texts: list[str]) -> list[int]:
    """1 where :func:`is_injection` holds, else 0, per text (a batch's ``injection`` column)."""
    return [1 if m else 0 for m in matches_batch(texts)]


def matches(text: str) -> list[str]:
    """Names of the :data:`PATTERNS` the text matches (its first 20,000 characters, lowered), in the
    order of :data:`PATTERNS`."""
    return matches_batch([text])[0] if text else []


def is_injection(text: str) -> bool:
    """Whether the text reads like a jailbreak or prompt-injection attempt."""
    return bool(matches(text))
