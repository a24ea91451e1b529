"""The abuse check's false-positive rate on replayed normal traffic, and how fast it finds injected abusers.

    ~/.cache/llm-monitor/venv/bin/python bench/abuse.py                  # 40 clients, 8 warm-up + 150 null + 30 trial windows
    ~/.cache/llm-monitor/venv/bin/python bench/abuse.py --null 40 --trials 10 --no-coverage   # quicker

1. Traffic: ``--clients`` normal clients (monitor/demo/clients_traffic.py: people asking about many
   topics in their own words, applications with one instruction around long content, classifiers
   with logprobs and ``max_tokens=1``; log-normal volumes, a daily cycle) for ``--warmup`` +
   ``--null`` + ``--trials`` hourly windows, written to a chdb store of the bench's own through
   ingest's normalize + enrich (client identity from the proxy's attributes, quality and injection
   flags). In each trial window three abusers with fresh keys are added: a harvester (one
   template, one varying slot, broad topics) at ``--harvest-ratio`` x the median client's requests in
   that window, a logprob extractor (short prompts, ``top_logprobs``, a logit bias, ``max_tokens=1``)
   at 2x, a jailbreaker at 1x. Generated once per parameter set and kept under ``--data-dir``.
2. Every window from the second on is checked by the real :class:`~monitor.checks.abuse.AbuseCheck`
   (window = one check interval = 1 h). A null split is one window of normal traffic: per signal,
   the share of null windows in which any normal client was flagged (the check run's false-positive
   rate, compared with ``checks.abuse.target_fpr``) and the share of normal client-windows flagged.
   Detection: the share of trials in which each abuser was flagged in its first window.
3. PRADA's statistic (evidence only) is reported as the share of normal clients' windows whose query
   distances it calls non-normal.

Prints a table and writes everything as JSON (``--out``, default /tmp/abuse-<time>.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET = b"bench-abuse-secret"
METRICS = ("volume", "templated_prompts", "topic_coverage", "logprob_extraction", "jailbreak")


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8, help="windows before the first evaluated one (history)")
    ap.add_argument("--null", type=int, default=150, help="windows of normal traffic only")
    ap.add_argument("--trials", type=int, default=30, help="windows with injected abusers")
    ap.add_argument("--median-rate", type=float, default=20.0, help="the median client's requests per hour")
    ap.add_argument("--harvest-ratio", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-coverage", action="store_true", help="skip the embedding signals")
    ap.add_argument("--data-dir", default=str(Path.home() / ".cache" / "llm-monitor" / "bench-abuse"))
    ap.add_argument("--out", default=f"/tmp/abuse-{int(time.time())}.json")
    return ap.parse_args()


def generate(store, args, start: float) -> dict:
    """Write every window; returns the injected clients' key hashes per trial window."""
    from monitor.demo import clients_traffic as ct
    from monitor.otlp.identity import key_hash

    clients = ct.normal_clients(args.clients, seed=args.seed, median_rate=args.median_rate)
    total = args.warmup + args.null + args.trials
    trials = {}
    t0 = time.monotonic()
    written = 0
    for w in range(total):
        ws = start + w * 3600
        reqs = ct.normal_window(clients, ws, phase=w % 24)
        if w >= args.warmup + args.null:
            k = w - args.warmup - args.null
            per = [sum(r.key == c.key for r in reqs) for c in clients]
            med = statistics.median(per)
            inject = {"harvester": ct.harvester(max(1, round(args.harvest_ratio * med)), ws, seed=100 + k,
                                                key=f"sk-harvest-{k:04d}"),
                      "extractor": ct.logprob_extractor(max(1, round(2 * med)), ws, seed=200 + k,
                                                        key=f"sk-extract-{k:04d}"),
                      "jailbreaker": ct.jailbreaker(max(1, round(med)), ws, seed=300 + k, key=f"sk-jailbreak-{k:04d}")}
            trials[str(w)] = {"median_requests": med, **{name: {"client": key_hash(SECRET, r[0].key),
                                                                 "requests": len(r)} for name, r in inject.items()}}
            for r in inject.values():
                reqs += r
        written += ct.store_requests(store, reqs, SECRET)
        if w % 20 == 0:
            print(f"  generated window {w + 1}/{total}: {written:,} requests ({time.monotonic() - t0:.0f}s)", flush=True)
    return {"trials": trials, "normal": [key_hash(SECRET, c.key) for c in clients], "requests": written}


def main() -> None:
    args = _args()
    from monitor.checks.abuse import AbuseCheck
    from monitor.checks.base import CheckContext, Scope, Window
    from monitor.config import load
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    params = {k: getattr(args, k) for k in ("clients", "warmup", "null", "trials", "median_rate", "harvest_ratio",
                                            "seed")}
    tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    data = Path(args.data_dir) / tag
    data.mkdir(parents=True, exist_ok=True)
    settings = load(overrides={"store": {"url": f"chdb://{data}"},
                               "checks": {"abuse": {"coverage": not args.no_coverage},
                                          "semantic": {"threads": 0}}})
    store = Store(settings.store)
    migrate(store, 3650)
    marker = data / "traffic.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        print(f"traffic from {data} ({meta['requests']:,} requests)")
    else:
        start = (time.time() // 3600) * 3600 - (args.warmup + args.null + args.trials) * 3600
        print(f"generating traffic into {data}", flush=True)
        meta = {"start": start, **generate(store, args, start), "params": params}
        marker.write_text(json.dumps(meta))
    check = AbuseCheck(settings.checks)
    if not args.no_coverage:
        from monitor.checks.embeddings import Embedder

        texts = [r[0] for r in store.query_rows("SELECT DISTINCT prompt FROM inference_events WHERE prompt != ''")]
        emb = Embedder(settings.checks.semantic, store=store)
        t0 = time.monotonic()
        emb.embed(texts)
        print(f"{len(texts):,} distinct prompts embedded or found in the cache in {time.monotonic() - t0:.0f}s "
              f"({emb.stats.embedded:,} new)", flush=True)

    normal = set(meta["normal"])
    total = args.warmup + args.null + args.trials
    rows = []
    t_run = []
    for w in range(1, total):
        ws = meta["start"] + w * 3600
        win = Window(datetime.fromtimestamp(ws, timezone.utc), datetime.fromtimestamp(ws + 3600, timezone.utc))
        t0 = time.monotonic()
        results = check.run(CheckContext(store, Scope("support-llm"), win, win, settings.checks))
        t_run.append(time.monotonic() - t0)
        flagged = [(r.metric, r.details["client"]) for r in results if r.status == "fail"]
        cov = check.last_findings.get("topic_coverage", [])
        rows.append({"window": w, "trial": str(w) in meta["trials"], "seconds": t_run[-1], "flagged": flagged,
                     "judged": {m: len(check.last_findings.get(m, [])) for m in METRICS},
                     "prada_nonnormal": sum(1 for f in cov if f.client in normal and f.evidence["prada_nonnormal"]),
                     "prada_tested": sum(1 for f in cov if f.client in normal and f.evidence["prada_p"] is not None),
                     "max_score": {m: max((f.score for f in check.last_findings.get(m, [])
                                           if f.client in normal and f.score is not None), default=None)
                                   for m in METRICS if m != "jailbreak"}})
        if w % 20 == 0:
            print(f"  checked window {w}/{total - 1} ({statistics.median(t_run):.2f}s per run)", flush=True)

    nulls = [r for r in rows if not r["trial"]]
    trials = [r for r in rows if r["trial"]]
    summary: dict = {"params": params, "coverage": not args.no_coverage, "null_windows": len(nulls),
                     "trial_windows": len(trials), "target_fpr": settings.checks.abuse.target_fpr,
                     "check_run_s_median": statistics.median(t_run), "signals": {}}
    client_windows = sum(r["judged"]["volume"] for r in nulls)
    print(f"\n{len(nulls)} null windows ({args.clients} normal clients each; {client_windows:,} judged client-windows), "
          f"{len(trials)} trial windows; check run {summary['check_run_s_median']:.2f}s (median)")
    print(f"{'signal':<20} {'runs with a false positive':>28} {'normal client-windows flagged':>31}")
    for m in (*METRICS, "any"):
        runs = sum(1 for r in nulls if any((mm == m or m == "any") and c in normal for mm, c in r["flagged"]))
        cw = sum(1 for r in nulls for mm, c in r["flagged"] if (mm == m or m == "any") and c in normal)
        cw += sum(1 for r in trials for mm, c in r["flagged"] if (mm == m or m == "any") and c in normal)
        denom = sum(r["judged"]["volume"] for r in rows)
        summary["signals"][m] = {"runs_with_fp": runs, "fpr_per_run": runs / len(nulls) if nulls else None,
                                 "client_windows_flagged": cw, "client_windows": denom}
        print(f"{m:<20} {runs:>6} / {len(nulls):<5} = {runs / max(1, len(nulls)):6.2%}   "
              f"{cw:>8} / {denom:<7} = {cw / max(1, denom):7.3%}")
    det = {}
    for name, signal in (("harvester", "templated_prompts"), ("extractor", "logprob_extraction"),
                         ("jailbreaker", "jailbreak")):
        by_signal, by_any = 0, 0
        for r in trials:
            who = meta["trials"][str(r["window"])][name]["client"]
            hits = {mm for mm, c in r["flagged"] if c == who}
            by_signal += signal in hits
            by_any += bool(hits)
        det[name] = {"signal": signal, "flagged_by_signal": by_signal, "flagged_by_any": by_any, "trials": len(trials)}
        print(f"detection {name:<12} by {signal:<19} {by_signal}/{len(trials)}  by any signal {by_any}/{len(trials)}")
    summary["detection"] = det
    pt = sum(r["prada_tested"] for r in rows)
    pn = sum(r["prada_nonnormal"] for r in rows)
    summary["prada"] = {"normal_client_windows_tested": pt, "called_nonnormal": pn}
    if pt:
        print(f"PRADA (evidence only): {pn}/{pt} = {pn / pt:.1%} of normal client-windows called non-normal "
              f"at p < {settings.checks.abuse.prada_alpha:g}")
    for m in ("volume", "templated_prompts", "topic_coverage"):
        vals = sorted(r["max_score"].get(m) for r in nulls if r["max_score"].get(m) is not None)
        if vals:
            q = {p: vals[min(len(vals) - 1, int(p * len(vals)))] for p in (0.5, 0.9, 0.99)}
            summary["signals"][m]["null_max_score_quantiles"] = q
            print(f"  highest {m} score of a normal client per null window: median {q[0.5]:.3g}, "
                  f"p90 {q[0.9]:.3g}, p99 {q[0.99]:.3g}")
    Path(args.out).write_text(json.dumps({"summary": summary, "windows": rows}, indent=1, default=str))
    print(f"\nwritten: {args.out}")
    store.close()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
