"""Repetition and degeneration: a completion stuck in a loop, or repeating itself. Pure, bounded windows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from operator import ne

__all__ = ["REPETITION_WINDOW", "LOOP_WINDOW", "repetition", "is_degenerate"]


REPETITION_WINDOW = 2400
"""Final characters whose word n-grams :func:`repetition` counts."""
LOOP_WINDOW = 16000
"""Final characters searched for a trailing loop (C-level string operations only), so that a long
paragraph repeated until the token limit is seen 3+ times."""
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_SENTENCE = re.compile(r"[。！？!?\n]+")
_DIGIT_RUN = re.compile(r"\d+")
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[^\W\d_]")
_MEANINGFUL = re.compile(r"[^\W_]|[^\s\w!-/:-@\[-`{-~\u2000-\u206f\u3000-\u303f\uff00-\uff0f]")
"""A letter, digit or symbol such as an emoji: a loop of only dashes, dots or spaces is layout."""
_NGRAM = 10
"""Word n-grams: long enough that tables, CSV, code and song choruses stay well below 0.5."""
_MIN_GRAMS = 24
_COUNTER_PROBE = 600
"""A counter loop is first looked for in this many final characters (then in the whole window)."""
_DIGITS_AS_ZERO = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))
_RUN_OF_REPEATS = b"\x01" * _NGRAM


@dataclass(frozen=True, slots=True)
class _Repetition:
    score: float
    """max(dup_share, loop_share), in [0, 1]."""
    dup_share: float
    """Share of word 10-grams (CJK: of sentence characters) that repeat an earlier one."""
    loop_share: float
    """Share of the loop window (:data:`LOOP_WINDOW`) that is the trailing periodic run."""
    loop_reps: float
    """How many times the trailing unit repeats."""
    loop_unit: int
    """Length in characters of the repeating unit (0 when there is no loop)."""
    counter_loop: bool
    """The loop only repeats once numbers are ignored ("Step 5: repeat step 4." "Step 6: ...")."""


_NO_REPETITION = _Repetition(0.0, 0.0, 0.0, 0.0, 0, False)


def _tail_loop(s: str) -> tuple[int, int]:
    """``(start, period)`` of the longest periodic suffix of ``s`` whose unit repeats (about) 3+ times;
    ``(len(s), 0)`` when there is none.

    Candidate periods come from earlier occurrences of the last few characters (C-level ``rfind``,
    at most 6 of them); the start of the periodic run is found by binary search on
    ``s[a:n-p] == s[a+p:n]``, which holds for every ``a`` from the run's start on.
    """
    n = len(s)
    if n < 12:
        return n, 0
    probe_len = 8 if n >= 40 else 4
    probe = s[n - probe_len:]
    best_start, best_p = n, 0
    hi = n - 1
    for _ in range(6):
        j = s.rfind(probe, 0, hi)
        if j < 0:
            break
        p = n - probe_len - j
        hi = j + probe_len - 1
        if 29 * p > 10 * n:  # farther back, periods only grow: no room for 3 units any more
            break
        if s[n - 2 * p:n - p] != s[n - p:]:
            continue
        lo_a, hi_a = 0, n - 2 * p  # s[a:n-p] == s[a+p:n] holds at hi_a; find the least such a
        while lo_a < hi_a:
            mid = (lo_a + hi_a) // 2
            if s[mid:n - p] == s[mid + p:n]:
                hi_a = mid
            else:
                lo_a = mid + 1
        if (n - lo_a) * 10 >= 29 * p and lo_a < best_start:  # 3 units, give or take a stripped space
            best_start, best_p = lo_a, p
    return best_start, best_p


def _counter_loop(s: str) -> tuple[int, int, str]:
    """A trailing loop once digit runs are folded to ``0``, whose unit has 4+ letters and at most
    two numbers (so table rows, listings and dates never are one): ``(start, period, folded s)``,
    else ``(0, 0, "")``. Looked for in the last :data:`_COUNTER_PROBE` characters first; only a
    loop found there makes the whole window be folded and measured."""
    raw = s[-_COUNTER_PROBE:]
    pieces = _DIGIT_RUN.split(raw[-80:])
    anchor = max(pieces, key=len)
    if len(anchor) < 4 or raw.count(anchor) < 3:
        return 0, 0, ""  # the text between the last numbers does not recur: no counter loop (cheap exit)
    tail = _DIGIT_RUN.sub("0", raw)
    start, p = _tail_loop(tail)
    if not p:
        return 0, 0, ""
    unit = tail[len(tail) - p:]
    if unit.count("0") > 2 or len(_LETTER.findall(unit)) < 4:
        return 0, 0, ""
    if len(s) <= _COUNTER_PROBE:
        return start, p, tail
    folded = _DIGIT_RUN.sub("0", s)
    start, p = _tail_loop(folded)
    return (start, p, folded) if p else (0, 0, "")


def _has_digit(s: str) -> bool:
    """``_DIGIT.search(s) is not None``; for ASCII text (where ``\\d`` is 0-9) a translate and a
    memchr (``bytes.find``: ``in`` on bytes first tries its operand as an integer, an exception)."""
    if s.isascii():
        return s.encode().translate(_DIGITS_AS_ZERO).find(b"0") >= 0
    return _DIGIT.search(s) is not None


def _may_repeat(tokens: list[str]) -> bool:
    """False when no word 10-gram of ``tokens`` can repeat an earlier one, so that the n-gram set need
    not be built (it is the costliest step on ordinary prose); True when one may.

    The later copy of a repeated 10-gram is 10 consecutive tokens that each occurred before. So there
    must be 10+ repeated tokens in all (one set), and then a run of 10 of them (first occurrences
    from one dict.setdefault pass). Ordinary answers fail one of the two; all C-level work.
    """
    n = len(tokens)
    if n - len(set(tokens)) < _NGRAM:
        return False
    first: dict[str, int] = {}
    seen_before = bytes(map(ne, map(first.setdefault, tokens, range(n)), range(n)))
    return seen_before.find(_RUN_OF_REPEATS) >= 0  # (bytes ``in`` first tries an int: an exception)


def _cjk_dup(s: str) -> float:
    """Share of sentence characters (CJK sentences, no spaces to split words) repeating an earlier sentence."""
    seen: set[str] = set()
    dup = total = 0
    for sentence in _CJK_SENTENCE.split(s):
        sentence = sentence.strip()
        if len(sentence) < 4:
            continue
        total += len(sentence)
        if sentence in seen:
            dup += len(sentence)
        else:
            seen.add(sentence)
    return dup / total if total >= 60 else 0.0


def _repetition(text: str) -> _Repetition:
    if not text:
        return _NO_REPETITION
    s = (text[-LOOP_WINDOW:] if len(text) > LOOP_WINDOW else text).rstrip()
    n = len(s)
    if n < 12:
        return _NO_REPETITION
    # 1. a loop at the end: the same unit (a word, a sentence, "abc", an emoji) over and over
    start, p = _tail_loop(s)
    counter = False
    if p and _MEANINGFUL.search(s, n - p, n) is None:
        p = 0  # "-----", "....": layout, not a loop
    if not p and _has_digit(s[-200:]):
        # "Step 5: Repeat step 4." "Step 6: Repeat step 5." ...: a loop once numbers are folded
        start, p, folded = _counter_loop(s)
        if p:
            s, n, counter = folded, len(folded), True
    loop_share = loop_reps = 0.0
    if p:
        loop_share = (n - start) / n
        loop_reps = (n - start) / p
    # 2. repeated word 10-grams anywhere (a loop that stopped, an answer given three times)
    if n > REPETITION_WINDOW:
        s, n = s[-REPETITION_WINDOW:], REPETITION_WINDOW
    tokens = s.split()
    dup = 0.0
    if len(tokens) * 12 < n and _CJK.search(s) is not None:
        dup = _cjk_dup(s)  # Chinese/Japanese: no spaces between words
    elif len(tokens) >= _NGRAM + _MIN_GRAMS and _may_repeat(tokens):
        grams = len(tokens) - _NGRAM + 1
        dup = 1.0 - len(set(zip(*(tokens[i:] for i in range(_NGRAM))))) / grams
    if not p and not dup:
        return _NO_REPETITION  # the same values; most answers end here
    score = max(dup, loop_share)
    return _Repetition(round(min(1.0, score), 4), round(dup, 4), round(loop_share, 4), round(loop_reps, 2),
                       p, counter)


def repetition(completion: str) -> float:
    """How repetitive the completion is, in [0, 1]: the larger of

    - the share of word 10-grams (whitespace-separated tokens) that repeat an earlier 10-gram; for
      Chinese/Japanese text (no spaces) the share of sentence characters repeating an earlier
      sentence; and
    - the share of the text taken by a trailing loop: the longest suffix in which one unit (a
      word, a line, a paragraph, ``abc``, an emoji; not layout such as ``----``) repeats 3+ times,
      or, with numbers ignored, a counter loop ("Step 5: Repeat step 4." "Step 6: ...").

    Invariants: 0.0 for texts under 12 characters; normal prose scores under ~0.05, tables, code
    and song choruses under ~0.35, an answer given twice just under 0.5; a completion that loops
    until it is cut off scores near 1. Bounded: loops are looked for in the last 16,000 characters,
    n-grams counted in the last 2,400 (loops run to the end of an output). Language-agnostic; no
    tokenizer, no model.
    """
    return _repetition(completion).score


def _degenerate(r: _Repetition) -> bool:
    if r.counter_loop:
        return r.loop_reps >= 8 and r.loop_share >= 0.5
    if r.loop_unit:
        # a short unit 10+ times, a phrase 4+ times over a third of the text, or a long unit 3+ times
        if r.loop_reps >= 10 and r.loop_unit * r.loop_reps >= 40:
            return True
        if r.loop_reps >= 4 and r.loop_share >= 0.3 and r.loop_unit * r.loop_reps >= 60:
            return True
        if r.loop_reps >= 3 and r.loop_unit >= 40 and r.loop_share >= 0.5:
            return True
    return r.dup_share >= 0.5


def is_degenerate(completion: str) -> bool:
    """True when the completion is stuck in a loop (see :func:`repetition`).

    Any of: a unit repeating at the end of the text (a short unit 10+ times over 40+ characters; a
    phrase 4+ times over a third of the text and 60+ characters; a unit of 40+ characters 3+ times
    over half of it); a counter loop ("Step 5: Repeat step 4." ...; numbers ignored) 8+ times over
    half of the text; or half of the 10-grams being repeats (a loop that stopped, an answer given
    three times). An answer given exactly twice (two identical choices joined) stays just below.
    """
    return _degenerate(_repetition(completion))
