"""Cost per event of the quality signals computed at ingest, and a differential check of their fast paths.

The load is the ingest benchmark's (``bench/ingest.py``): ``build_requests(events, 256, seed)``, each span
mapped by ``monitor.otlp.genai.span_to_event`` to the prompt, completion, finish reason, attributes and
system prompt that ``monitor.quality.analyse`` receives at ingest (prompts of 3-6 English sentences,
completions of 3-6). Each run times, one after the other so that a busy machine slows all alike:

- ``reference``: the implementation before the fast paths (``tests/quality_reference``);
- ``analyse``: ``monitor.quality.analyse`` per event;
- ``analyse_batch``: ``monitor.quality.analyse_batch`` over the whole load.

It prints µs per event (wall clock and this thread's CPU time) for every run and the median of the
runs. Then the differential check: every flag of every event equal between the reference and both
entry points, on the load and on ``--diff`` varied events (``differential_events`` of
``tests/test_quality_detectors.py``: many languages, refusals and their hard negatives, degenerate
and repetitive outputs, JSON, PII placeholders, empty, odd and truncated texts, random edits).
Exit status 1 when any flag differs.

    ~/.cache/llm-monitor/venv/bin/python bench/quality.py                 # 5000 events, 7 runs
    ~/.cache/llm-monitor/venv/bin/python bench/quality.py --runs 3 --diff 0
    ~/.cache/llm-monitor/venv/bin/python bench/quality.py --profile        # where the time goes now
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

Event = tuple[str, str, str, "dict[str, str] | None", str]


def ingest_load(n_events: int, seed: int) -> list[Event]:
    """The ingest benchmark's spans as ``analyse`` sees them at ingest: the event's prompt, completion,
    finish reason, attributes and system prompt, as ``monitor.ingest.enrich`` passes them."""
    from ingest import build_requests  # bench/ingest.py (this script's folder is on sys.path)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from monitor.otlp.genai import span_to_event

    events: list[Event] = []
    for body, _ in build_requests(n_events, 256, seed):
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    ev = span_to_event(span, "bench")
                    if ev is not None:
                        attrs = getattr(ev, "attributes", None) or {}
                        events.append((ev.prompt, ev.completion, ev.finish_reason, attrs, ev.system_prompt))
    return events


def _per_event(analyse: Callable[..., Any]) -> Callable[[list[Event]], list[Any]]:
    return lambda events: [analyse(p, c, f, a, system_prompt=s) for p, c, f, a, s in events]


def _time(run: Callable[[list[Event]], list[Any]], events: list[Event]) -> tuple[float, float]:
    """(wall, CPU) microseconds per event for one pass."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.thread_time()
    run(events)
    return ((time.perf_counter() - wall) / len(events) * 1e6, (time.thread_time() - cpu) / len(events) * 1e6)


def _rows(flags: list[Any]) -> list[tuple]:
    return [f.row() for f in flags]


def differential(events: list[Event], label: str) -> int:
    """Events whose flags differ between the reference and analyse / analyse_batch (printed)."""
    from monitor.quality import analyse, analyse_batch
    from quality_reference import detectors as reference

    want = _rows(_per_event(reference.analyse)(events))
    got = _rows(_per_event(analyse)(events))
    batch = _rows(analyse_batch(events))
    bad = [i for i, (w, g, b) in enumerate(zip(want, got, batch)) if not w == g == b]
    print(f"differential ({label}): {len(events)} events, {len(bad)} differ")
    for i in bad[:10]:
        print(f"  {events[i][:2]!r}\n    reference {want[i]}\n    analyse   {got[i]}\n    batch     {batch[i]}")
    return len(bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=5000, help="spans in the ingest load (default 5000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each entry point (default 7)")
    ap.add_argument("--diff", type=int, default=20000, help="varied events for the differential check (0: skip)")
    ap.add_argument("--no-reference", action="store_true", help="do not time the reference implementation")
    ap.add_argument("--profile", action="store_true", help="cProfile analyse over the load; top functions")
    args = ap.parse_args()

    from monitor.quality import analyse, analyse_batch, warm_up
    from quality_reference import detectors as reference

    t0 = time.perf_counter()
    events = ingest_load(args.events, args.seed)
    mean_chars = statistics.mean(len(p) + len(c) for p, c, *_ in events)
    print(f"load: {len(events)} events from build_requests({args.events}, 256, {args.seed}), mean prompt+completion "
          f"{mean_chars:.0f} characters ({time.perf_counter() - t0:.1f} s to build)")
    assert warm_up(), "py3langid is not installed"
    entries: dict[str, Callable[[list[Event]], list[Any]]] = {}
    if not args.no_reference:
        entries["reference"] = _per_event(reference.analyse)
    entries["analyse"] = _per_event(analyse)
    entries["analyse_batch"] = analyse_batch
    for run in entries.values():  # warm caches, first-use compilation
        run(events[:200])

    walls: dict[str, list[float]] = {name: [] for name in entries}
    cpus: dict[str, list[float]] = {name: [] for name in entries}
    for i in range(args.runs):
        line = []
        for name, run in entries.items():
            wall, cpu = _time(run, events)
            walls[name].append(wall)
            cpus[name].append(cpu)
            line.append(f"{name} {wall:7.1f} ({cpu:6.1f} CPU)")
        print(f"run {i + 1}: " + ", ".join(line) + " us/event")
    print(f"\nmedian of {args.runs} runs, us/event (wall / CPU of this thread):")
    for name in entries:
        print(f"  {name:<14} {statistics.median(walls[name]):7.1f} / {statistics.median(cpus[name]):6.1f}"
              f"   (best {min(walls[name]):.1f} / {min(cpus[name]):.1f})")
    if "reference" in entries:
        ref = statistics.median(walls["reference"])
        print(f"  speed-up: analyse {ref / statistics.median(walls['analyse']):.1f}x, "
              f"analyse_batch {ref / statistics.median(walls['analyse_batch']):.1f}x")

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(entries["analyse"], events)
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)

    bad = differential(events, "ingest load")
    if args.diff:
        import test_quality_detectors as labelled  # tests/: the labelled texts and their variations

        bad += differential(labelled.differential_events(args.diff, seed=args.seed), "varied texts")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
