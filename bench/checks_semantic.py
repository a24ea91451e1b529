"""Semantic drift costs: embedding throughput (cold / warm cache) and the MMD permutation test.

    python bench/checks_semantic.py                       # defaults below, on CPU (or CUDA if present)
    python bench/checks_semantic.py --device cpu --texts 400 --paragraphs 100 --no-exact

1. Embeddings per second through :class:`monitor.checks.embeddings.Embedder` with the bundled
   all-MiniLM-L6-v2, at batch sizes 32 and 128, on two sets of real text (sentences and whole
   paragraphs of the Python standard library's docstrings):
   - ``cold``: empty ``embedding_cache``: cache lookup + model + cache insert, end to end;
   - ``model``: the model's share of that (texts / seconds inside ``encode``);
   - ``warm``: the same texts again through a new Embedder: everything comes from ClickHouse.
   Each cell runs ``--repeat`` times, interleaved; the table shows medians, the JSON every run.
   The store is a chdb directory of this process's own under a temporary directory (chdb allows
   one directory per process); the model load is timed apart.
2. The permutation test (:func:`monitor.checks.semantic.mmd_test`, 1,000 permutations) at
   2k vs 2k (the default sample; exact kernel) and 10k vs 10k (random Fourier features, and the
   exact kernel unless ``--no-exact``: a 20k x 20k float32 kernel, 1.6 GB). The vectors are
   real embeddings plus noise, re-normalised: the cost does not depend on the content.

Prints a table and writes everything as JSON (``--out``, default /tmp/checks_semantic-<time>.json).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULES = ["email", "email.message", "email.utils", "email.parser", "email.headerregistry", "email.policy",
           "http.client", "http.server", "http.cookies", "http.cookiejar", "urllib.request", "urllib.parse",
           "json", "csv", "turtle", "statistics", "decimal", "fractions", "argparse", "logging", "asyncio",
           "collections", "datetime", "pathlib", "subprocess", "threading", "unittest", "sqlite3", "zipfile"]


def docstrings() -> list[str]:
    out, seen = [], set()
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod]
        for key, value in sorted(vars(mod).items()):
            if not key.startswith("_") and not inspect.ismodule(value):
                objs.append(value)
                if inspect.isclass(value):
                    objs.extend(v for k, v in sorted(vars(value).items()) if not k.startswith("_"))
        for obj in objs:
            try:
                doc = inspect.getdoc(obj)
            except Exception:
                doc = None
            if doc and doc not in seen:
                seen.add(doc)
                out.append(doc)
    return out


def corpus() -> tuple[list[str], list[str]]:
    """(sentences of 5-60 words, paragraphs of 20-250 words), sorted, deduplicated."""
    sentences, paragraphs = set(), set()
    for doc in docstrings():
        for para in re.split(r"\n\s*\n", doc):
            if ">>>" in para:
                continue
            flat = " ".join(para.split())
            if 20 <= len(flat.split()) <= 250:
                paragraphs.add(flat)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat):
                if 5 <= len(s.split()) <= 60:
                    sentences.add(s)
    return sorted(sentences), sorted(paragraphs)


def bench_embeddings(args, store, texts: dict[str, list[str]]) -> tuple[list[dict], object]:
    """Rows, and the embeddings of the first text set (the base of the MMD inputs)."""
    import torch

    from monitor.checks.embeddings import Embedder
    from monitor.config import SemanticSettings

    settings = SemanticSettings(device=args.device)
    t0 = time.monotonic()
    Embedder(settings).model  # noqa: B018 - load once (shared by every Embedder of the process)
    load_s = time.monotonic() - t0
    rows = [{"what": "model load", "device": Embedder(settings).device, "seconds": load_s}]
    base = None
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.repeat):  # interleaved, so a busy spell of the machine hits every cell alike
        for name, items in texts.items():
            for batch in args.batch_sizes:
                store.command("TRUNCATE TABLE embedding_cache")
                cold = Embedder(settings, store, batch_size=batch)
                t0 = time.monotonic()
                emb = cold.embed(items)
                if emb.is_cuda:
                    torch.cuda.synchronize()
                cold_s = time.monotonic() - t0
                warm = Embedder(settings, store, batch_size=batch)
                t0 = time.monotonic()
                again = warm.embed(items)
                warm_s = time.monotonic() - t0
                assert warm.stats.embedded == 0 and torch.allclose(emb, again, atol=1e-5)
                base = emb if base is None else base
                runs.setdefault((name, batch), []).append({
                    "cold_per_s": len(items) / cold_s, "model_per_s": cold.stats.embeddings_per_s,
                    "warm_per_s": len(items) / warm_s, "cold_s": cold_s, "warm_s": warm_s,
                    "lookup_s": cold.stats.lookup_seconds, "insert_s": cold.stats.insert_seconds,
                    "warm_lookup_s": warm.stats.lookup_seconds, "device": cold.device})
                r = runs[(name, batch)][-1]
                print(f"  [{rep + 1}/{args.repeat}] embed {name:<10} n={len(items):<5} batch {batch:<4} "
                      f"cold {r['cold_per_s']:8.1f}/s (model {r['model_per_s']:.1f}/s)  "
                      f"warm {r['warm_per_s']:9.1f}/s", flush=True)
    for (name, batch), rs in runs.items():
        items = texts[name]
        row = {"what": "embed", "texts": name, "n": len(items),
               "mean_words": round(sum(len(t.split()) for t in items) / max(1, len(items)), 1),
               "batch": batch, "device": rs[0]["device"], "runs": rs}
        for key in ("cold_per_s", "model_per_s", "warm_per_s"):
            row[key] = statistics.median(r[key] for r in rs)
        rows.append(row)
    return rows, base


def bench_mmd(args, base) -> list[dict]:
    import torch

    from monitor.checks.semantic import mmd_test

    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)

    def sample(n: int, shift: float = 0.0):
        idx = torch.randint(len(base), (n,), generator=g)
        x = base[idx].cpu() + 0.05 * torch.randn(n, base.shape[1], generator=g)
        if shift:
            x[:, :8] += shift
        return torch.nn.functional.normalize(x, dim=1).to(device)

    cases = [(2000, "exact"), (10_000, "rff")]
    if not args.no_exact:
        cases.append((10_000, "exact"))
    rows = []
    for n, method in cases:
        x, y = sample(n), sample(n)
        kw = {"method": method}
        for dim in (args.rff_dims if method == "rff" else [None]):
            if dim:
                kw["rff_dim"] = dim
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.monotonic()
            r = mmd_test(x, y, permutations=args.permutations, seed=1, **kw)
            if device == "cuda":
                torch.cuda.synchronize()
            s = time.monotonic() - t0
            rows.append({"what": "mmd", "n": n, "m": n, "method": r.method, "features": r.features,
                         "permutations": r.permutations, "device": device, "seconds": s,
                         "statistic": r.statistic, "p_value": r.p_value})
            print(f"  mmd {n} vs {n} {r.method:<5} D={r.features or '-':<5} P={r.permutations}: {s:7.2f} s "
                  f"(MMD2_u {r.statistic:.2e}, p {r.p_value:.3f})", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--texts", type=int, default=600, help="sentences to embed (0: skip)")
    ap.add_argument("--paragraphs", type=int, default=150, help="paragraphs to embed (0: skip)")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128])
    ap.add_argument("--repeat", type=int, default=3, help="embedding runs per cell (medians are reported)")
    ap.add_argument("--permutations", type=int, default=1000)
    ap.add_argument("--rff-dims", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048])
    ap.add_argument("--no-exact", action="store_true", help="skip the 10k vs 10k exact kernel (1.6 GB)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default, one per core). On a shared, busy "
                         "machine 1 can be several times faster: see bench/README.md")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from monitor.checks.embeddings import Embedder
    from monitor.config import SemanticSettings, StoreSettings
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    sentences, paragraphs = corpus()
    texts = {}
    if args.texts:
        texts["sentences"] = sentences[:: max(1, len(sentences) // args.texts)][: args.texts]
    if args.paragraphs:
        texts["paragraphs"] = paragraphs[:: max(1, len(paragraphs) // args.paragraphs)][: args.paragraphs]
    print(f"semantic drift bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda {torch.cuda.is_available()}; {len(sentences)} sentences, {len(paragraphs)} paragraphs available",
          flush=True)
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                          "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "loadavg_start": os.getloadavg()},
              "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-semantic-") as tmp:
        store = Store(StoreSettings(url=f"chdb://{tmp}/chdb", database="bench"))
        try:
            migrate(store, 30)
            rows, base = bench_embeddings(args, store, texts) if texts else ([], None)
            if base is None:
                base = Embedder(SemanticSettings(device=args.device)).embed(sentences[:200])
        finally:
            store.close()
    rows += bench_mmd(args, base)
    result["rows"] = rows
    result["machine"]["loadavg_end"] = os.getloadavg()

    print(f"\nembeddings per second, medians of {args.repeat} runs, {torch.get_num_threads()} torch threads")
    print("| texts | n | words | batch | device | cold /s | model /s | warm (ClickHouse) /s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["what"] == "embed":
            print(f"| {r['texts']} | {r['n']} | {r['mean_words']} | {r['batch']} | {r['device']} | "
                  f"{r['cold_per_s']:.1f} | {r['model_per_s']:.1f} | {r['warm_per_s']:.0f} |")
        elif r["what"] == "model load":
            print(f"| (model load: {r['seconds']:.1f} s on {r['device']}) | | | | | | | |")
    print("\n| n vs m | method | D | permutations | device | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["what"] == "mmd":
            print(f"| {r['n']} vs {r['m']} | {r['method']} | {r['features'] or '-'} | {r['permutations']} | "
                  f"{r['device']} | {r['seconds']:.2f} |")
    out = Path(args.out or f"/tmp/checks_semantic-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nload average {result['machine']['loadavg_start']} -> {result['machine']['loadavg_end']}; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
