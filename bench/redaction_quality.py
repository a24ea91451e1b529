#!/usr/bin/env python3
"""Precision and recall of the redaction detectors per kind, on the labelled set.

The set, ``tests/fixtures/pii_labelled.jsonl``: one JSON object a line,
``{"text": ..., "spans": [[KIND, substring], ...], "set": "base" | "new"}``,
spans in order of appearance (a substring that occurs twice is listed twice).
``base`` are the snippets the detectors were first written against; ``new``
are the texts written for the identity kinds (IBAN, SSN, national ids,
passports, dates of birth, addresses, AWS secrets), hard negatives included.
Numbers with check digits in it were drawn and checked with python-stdnum, not
with the detectors under test.

Scoring is exact by default: a finding counts only when kind, start and end all
agree with a label. ``--overlap`` counts a finding of the right kind that
overlaps a label (each label matched once), the fair way to compare a tool whose
spans are cut differently (``--compare``).

    ~/.cache/llm-monitor/venv/bin/python bench/redaction_quality.py            # table and misses
    ~/.cache/llm-monitor/venv/bin/python bench/redaction_quality.py --markdown # README table
    # another tool's findings, written by bench/presidio_findings.py in its own venv:
    ~/.cache/llm-monitor/venv/bin/python bench/redaction_quality.py --overlap --compare /tmp/presidio.json

Also imported by tests/test_redaction.py, which asserts the minimums.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "tests" / "fixtures" / "pii_labelled.jsonl"

Case = tuple[str, list[tuple[str, str]]]
Span = tuple[str, int, int]


def load(path: Path = LABELLED, which: str | None = None) -> list[Case]:
    """The labelled texts (``which``: only the ``base`` or ``new`` ones)."""
    out: list[Case] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if which is None or row.get("set") == which:
                    out.append((row["text"], [(k, s) for k, s in row["spans"]]))
    return out


def expected(text: str, spans: list[tuple[str, str]]) -> list[Span]:
    """The labels as ``(kind, start, end)``: each substring found after the previous one."""
    out: list[Span] = []
    pos = 0
    for kind, sub in spans:
        start = text.find(sub, pos)
        if start < 0:
            raise ValueError(f"labelled substring {sub!r} not found in {text!r} after {pos}")
        out.append((kind, start, start + len(sub)))
        pos = start + len(sub)
    return out


def score(found: Iterable[list[Span]], cases: list[Case], overlap: bool = False,
          ) -> tuple[dict[str, Counter], list[str]]:
    """Per kind ``Counter(tp, fp, fn)`` of ``found`` (one list of spans per case), and one line per miss."""
    per: dict[str, Counter] = {}
    misses: list[str] = []
    for (text, spans), got in zip(cases, found, strict=True):
        want = expected(text, spans)
        if overlap:
            pairs = _overlap_pairs(got, want)
            hit_got = {g for g, _ in pairs}
            hit_want = {w for _, w in pairs}
        else:
            hit_got = hit_want = set(got) & set(want)
        for kind, start, end in got:
            c = per.setdefault(kind, Counter())
            if (kind, start, end) in hit_got:
                c["tp"] += 1
            else:
                c["fp"] += 1
                misses.append(f"FP {kind:<14} {text[start:end]!r}  in  {text[:80]!r}")
        for kind, start, end in want:
            if (kind, start, end) not in hit_want:
                per.setdefault(kind, Counter())["fn"] += 1
                misses.append(f"FN {kind:<14} {text[start:end]!r}  in  {text[:80]!r}")
    return per, misses


def _overlap_pairs(got: list[Span], want: list[Span]) -> list[tuple[Span, Span]]:
    pairs, used = [], set()
    for g in got:
        for w in want:
            if w not in used and g[0] == w[0] and g[1] < w[2] and w[1] < g[2]:
                pairs.append((g, w))
                used.add(w)
                break
    return pairs


def ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def precision(c: Counter) -> float:
    return ratio(c["tp"], c["tp"] + c["fp"])


def recall(c: Counter) -> float:
    return ratio(c["tp"], c["tp"] + c["fn"])


def table(per: dict[str, Counter], markdown: bool = False) -> list[str]:
    total = sum(per.values(), Counter())
    rows = [(k, per[k]) for k in sorted(per)] + [("overall", total)]
    if markdown:
        out = ["| kind | labelled | found | precision | recall |", "| --- | ---: | ---: | ---: | ---: |"]
        out += [f"| {k} | {c['tp'] + c['fn']} | {c['tp'] + c['fp']} | {precision(c):.2f} | {recall(c):.2f} |"
                for k, c in rows]
        return out
    out = [f"{'kind':<14}{'tp':>5}{'fp':>5}{'fn':>5}{'precision':>11}{'recall':>8}"]
    out += [f"{k:<14}{c['tp']:>5}{c['fp']:>5}{c['fn']:>5}{precision(c):>11.3f}{recall(c):>8.3f}" for k, c in rows]
    return out


def findings(scan: Callable[[str], Iterable], cases: list[Case]) -> list[list[Span]]:
    """``scan(text)`` of every case as spans (``Finding``-like objects with kind, start, end)."""
    return [[(f.kind, f.start, f.end) for f in scan(text)] for text, _ in cases]


def time_per_text(scan: Callable[[str], object], cases: list[Case], runs: int = 5) -> float:
    """Median µs per text over ``runs`` passes over the set."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for text, _ in cases:
            scan(text)
        times.append((time.perf_counter() - t) / len(cases) * 1e6)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=["base", "new"], help="score only this part of the set")
    ap.add_argument("--overlap", action="store_true", help="count overlapping findings of the right kind")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--compare", type=Path, help="JSON findings of another tool (bench/presidio_findings.py)")
    ap.add_argument("--quiet", action="store_true", help="no list of misses")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from monitor.redaction import Redactor

    cases = load(which=args.set)
    redactor = Redactor()
    ours = findings(redactor.scan, cases)
    per, misses = score(ours, cases, args.overlap)
    print(f"{len(cases)} texts, {sum(len(s) for _, s in cases)} labelled spans; "
          f"{'overlap' if args.overlap else 'exact'} scoring; llm-monitor {time_per_text(redactor.scan, cases):.0f} "
          "µs/text (median of 5 passes, one thread)")
    print("\n".join(table(per, args.markdown)))
    if not args.quiet:
        print("\n".join(misses))
    if args.compare:
        other = json.loads(args.compare.read_text())
        theirs = [[tuple(s) for s in other["findings"][text]] for text, _ in cases]
        per2, misses2 = score(theirs, cases, args.overlap)
        print(f"\n{other['tool']}: {other['us_per_text']:.0f} µs/text ({other.get('note', '')})")
        print("\n".join(table(per2, args.markdown)))
        if not args.quiet:
            print("\n".join(misses2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
