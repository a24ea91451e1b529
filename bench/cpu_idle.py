#!/usr/bin/env python3
"""How long a woken data-plane task waits behind the analysis processes, per CPU policy.

The mechanism under ``processes.sched_idle`` and ``processes.idle_cgroup`` (monitor/runtime/cpu.py),
measured without sockets or a model server: one process at niceness 0 (the proxy's place) sleeps
``--sleep-us`` and measures how late it wakes, ``--samples`` times, while one CPU-bound process per
core (the analysis' place: pure-Python loops, each in a session of its own as ``monitor up`` starts
its children) runs under each policy, interleaved over ``--rounds``:

- ``none``: no analysis processes (the floor);
- ``nice``: niceness 19 on the process and its session's autogroup;
- ``sched_idle``: that plus SCHED_IDLE (the default before idle cgroups);
- ``idle_cgroup``: that plus a cgroup marked ``cpu.idle`` (needs write access to the cpu cgroup:
  root here; the row says so where it is not possible).

Lateness percentiles in µs, medians over rounds::

    ~/.cache/llm-monitor/venv/bin/python bench/cpu_idle.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.runtime.cpu import join_idle_cgroup, lower_priority, remove_idle_cgroup  # noqa: E402

POLICIES = ("none", "nice", "sched_idle", "idle_cgroup")


def _busy(policy: str, owner: int, ready_w: int) -> None:
    os.setsid()
    ok = b"1"
    if policy in ("nice", "sched_idle", "idle_cgroup"):
        lower_priority(19, idle=policy != "nice")
    if policy == "idle_cgroup":
        try:
            join_idle_cgroup(owner)
        except OSError as exc:
            ok = b"0" + str(exc).encode()[:400]
    os.write(ready_w, ok)
    os.close(ready_w)
    x = 0
    while True:
        x += 1


def _cell(policy: str, samples: int, sleep_s: float) -> tuple[list[float], str]:
    kids, why = [], ""
    if policy != "none":
        for _ in range(os.cpu_count() or 1):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                try:
                    _busy(policy, os.getppid(), w)
                finally:
                    os._exit(0)
            os.close(w)
            msg = os.read(r, 512)
            os.close(r)
            if not msg.startswith(b"1"):
                why = msg[1:].decode(errors="replace")
            kids.append(pid)
    try:
        time.sleep(0.3)  # the loops take their share
        late = []
        for _ in range(samples):
            t = time.perf_counter()
            time.sleep(sleep_s)
            late.append((time.perf_counter() - t - sleep_s) * 1e6)
    finally:
        for k in kids:
            os.kill(k, 9)
            os.waitpid(k, 0)
        remove_idle_cgroup(os.getpid())
    return late, why


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000, help="wake-ups per cell [3000]")
    ap.add_argument("--sleep-us", type=float, default=1000.0, help="each sleep, µs [1000]")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every policy [3]")
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args()
    policies = args.policies.split(",")
    print(f"{os.cpu_count()} CPUs, kernel {os.uname().release}; {args.samples} sleeps of {args.sleep_us:.0f} µs "
          f"per cell, {args.rounds} rounds; one busy loop per CPU under each policy", flush=True)
    per: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in policies}
    notes: dict[str, str] = {}
    for rnd in range(args.rounds):
        for p in policies:
            late, why = _cell(p, args.samples, args.sleep_us / 1e6)
            if why:
                notes[p] = why
            row = (_q(late, .5), _q(late, .9), _q(late, .99), max(late))
            per[p].append(row)
            print(f"  round {rnd + 1} {p:<12} lateness p50 {row[0]:7.0f}  p90 {row[1]:7.0f}  p99 {row[2]:7.0f}  "
                  f"max {row[3]:7.0f} µs", flush=True)
    print("\npolicy        p50 µs   p90 µs   p99 µs   max µs   (medians over rounds)")
    for p in policies:
        cols = [statistics.median(r[i] for r in per[p]) for i in range(4)]
        print(f"{p:<12} " + " ".join(f"{c:8.0f}" for c in cols) + (f"   NOT APPLIED: {notes[p]}" if p in notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
