"""What every detector is made of: the :class:`Detector` record, text helpers for validators and
the building blocks of the byte-level supersets (see :mod:`monitor.redaction.detectors`, whose
docstring says what keeps a superset a superset)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from monitor.redaction._prefilter import STAND_IN

__all__ = ["Detector", "Validator", "Finder", "CASE_TWINS"]

_ANY = re.compile(r".+", re.S)
"""Turns a span a finder worked out by hand into a match: ``_ANY.match(text, start, end)``."""

Validator = Callable[[re.Match[str], str], bool]
"""``(match, original_text) -> keep?``; ``match.string`` is the lower-cased text for keyword patterns."""
Finder = Callable[[re.Pattern[str], str], Iterator[re.Match[str]]]


@dataclass(frozen=True, slots=True)
class Detector:
    """One pattern of one kind.

    ``prefilter``: literals of which one must occur in the text (else the detector is skipped);
    ``prefilter_ci``: the same against the lower-cased text. ``ci``: when set, ``pattern`` is
    lower-case and runs on the lower-cased text, ``ci`` (case-insensitive) on the original.
    ``finder``: yields candidate matches itself (anchored search) instead of ``finditer``.
    ``superset``: a Hyperscan pattern over the UTF-8 bytes (case-insensitive when ``ci`` is set)
    that matches wherever this detector can report a finding; empty when there is none (custom
    rules): the detector then always runs.
    """

    kind: str
    pattern: re.Pattern[str]
    groups: tuple[int | str, ...] = (0,)
    prefilter: tuple[str, ...] = ()
    prefilter_ci: tuple[str, ...] = ()
    validate: Validator | None = None
    ci: re.Pattern[str] | None = None
    finder: Finder | None = None
    superset: str = ""

    def candidates(self, text: str, lower: str) -> Iterator[re.Match[str]]:
        if self.finder is not None:
            return self.finder(self.pattern, text)
        if self.ci is not None:
            return self.pattern.finditer(lower) if len(lower) == len(text) else self.ci.finditer(text)
        return self.pattern.finditer(text)

    def span(self, m: re.Match[str]) -> tuple[int, int]:
        """The part of a match to replace: the first group in ``groups`` that matched."""
        for g in self.groups:
            start, end = m.span(g)
            if start >= 0:
                return start, end
        return m.span()


_DIGITS = tuple("0123456789")

# Building blocks of the byte-level supersets (module docstring: what keeps them supersets).
_HI = r"\x80-\xff"
"""Inside a byte class: every byte of a non-ASCII character."""
_BLANKS = rf"[\s\x1c-\x1f{_HI}]+"
"""``\\s+``: the ASCII characters Python's ``\\s`` matches, or any non-ASCII byte."""
_NOT_BLANK = r"\s\x1c-\x1f"
"""The ASCII characters Python's ``\\s`` matches: a class without ``\\s`` may leave these out too."""

CASE_TWINS = ("\u0130", "\u212a")
"""The non-ASCII characters that become ASCII letters in the text keyword patterns run on:
:meth:`Redactor.scan` replaces ``İ`` by ``i`` and lower-cases, which maps the Kelvin sign to ``k``.
Keyword supersets spell ASCII letters only, so a text holding one of these runs every keyword
detector. (The ``re.I`` twins never run: after that replacement lower-casing keeps the length;
tests/test_redaction.py checks both facts.)"""


def _lower(pattern: str, flags: int = 0) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A lower-case pattern for the lower-cased text, and its case-insensitive twin."""
    return re.compile(pattern, flags), re.compile(pattern, flags | re.I)


def _before(m: re.Match[str], n: int = 32, group: int | str = 0) -> str:
    start = m.start(group)
    return m.string[max(0, start - n):start]


def _after(m: re.Match[str], n: int = 16, group: int | str = 0) -> str:
    end = m.end(group)
    return m.string[end:end + n]


def _word_start(text: str, i: int, extra: str = "") -> bool:
    """``text[i]`` starts a word: nothing, or neither a letter, digit, ``_`` nor one of ``extra`` before it."""
    if i == 0:
        return True
    c = text[i - 1]
    return not (c.isalnum() or c == "_" or c in extra)


def _ndigits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _word(word: str) -> str:
    """A keyword of a case-insensitive superset: a blank stands for ``\\s+``; a non-ASCII letter for its
    UTF-8, that of its upper case and the JSON stand-in (``\\u00e9`` in JSON text)."""
    out = []
    for c in word:
        if c == " ":
            out.append(_BLANKS)
        elif c.isascii():
            out.append(re.escape(c))
        else:
            alts = {c, c.upper(), STAND_IN.decode()}
            out.append("(?:" + "|".join(sorted("".join(f"\\x{b:02x}" for b in a.encode()) for a in alts)) + ")")
    return "".join(out)
