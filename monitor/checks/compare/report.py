"""One comparison of two sides on one window: what ``monitor compare`` prints and the Compare page shows.

:func:`compare` runs the queries of :mod:`~monitor.checks.compare.queries` and the tests of
:mod:`~monitor.checks.compare.stats` and returns a JSON-ready dict:

- ``sides``: requests (and shadow requests among them), tokens, endpoints of A and B;
- ``distributions``: latency, TTFT, tokens per second, output tokens and characters: medians and
  p95s, Mann-Whitney p, bootstrap CIs of the differences (B - A) and of the p95 ratio;
- ``rates``: refusal, truncation, empty, invalid JSON, language mismatch, error: two-proportion z
  p-value and Newcombe CI of the difference;
- ``cost``: per 1k requests (mean cost per request x 1000, Welch CI) and per 1k tokens, for the
  requests that carry a cost (``token_cost`` for managed endpoints, else ``gpu_cost``);
- ``semantic``: the MMD permutation test between the two sets of answers (all-MiniLM-L6-v2
  embeddings, as the ``semantic_drift`` check; needs the ``checks`` extra);
- ``pairs``: for shadow pairs (the same prompt answered by both): how many, both refused / one
  refused, the cosine similarity of the two answers (median, share under 0.5), and the prompts
  where they disagree most.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from monitor.checks.compare import queries as q
from monitor.checks.compare.stats import compare_means, compare_rates, compare_values

if TYPE_CHECKING:
    from monitor.config import SemanticSettings

__all__ = ["DISTRIBUTIONS", "compare", "render"]

log = logging.getLogger("monitor.checks.compare")

DISTRIBUTIONS = ("latency_ms", "ttft_ms", "tokens_per_s", "output_tokens", "output_chars")
_SEMANTIC_SAMPLE = 200
_PAIRS_EMBEDDED = 300


def compare(store: Any, a: q.Side, b: q.Side, start: datetime, end: datetime, *, semantic: bool = True,
            semantic_settings: SemanticSettings | None = None, examples: int = 10, level: float = 0.95,
            embed_cache: bool = True) -> dict[str, Any]:
    """The whole comparison of ``a`` and ``b`` over ``[start, end)`` (see the module doc).
    ``semantic_settings``: the ``checks.semantic`` section (default: its defaults). ``embed_cache``: keep
    the answers' embeddings in ``embedding_cache`` (False for a read-only store)."""
    ta, tb = q.totals(store, a, start, end), q.totals(store, b, start, end)
    va, vb = q.values(store, a, start, end), q.values(store, b, start, end)
    out: dict[str, Any] = {
        "a": a.label(), "b": b.label(), "window": {"from": start.isoformat(), "to": end.isoformat()},
        "sides": {"a": _side(ta), "b": _side(tb)},
        "distributions": {m: compare_values(m, va[m], vb[m], level).as_dict() for m in DISTRIBUTIONS},
        "rates": {name: compare_rates(name, *ta["rates"][name], *tb["rates"][name], level).as_dict()
                  for name in q.RATES},
        "cost": _cost(ta, tb, va["cost"], vb["cost"], level),
    }
    embedder = _embedder(store if embed_cache else None, semantic_settings) if semantic else None
    out["semantic"] = _semantic(store, embedder, a, b, start, end) if semantic else {"skipped": "not asked for"}
    n_pairs, rows = q.pairs(store, a, b, start, end)
    out["pairs"] = _pairs(n_pairs, rows, embedder if semantic else None, examples)
    return out


def _side(t: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in t.items() if k != "rates"}


def _cost(ta: dict[str, Any], tb: dict[str, Any], ca: list[float], cb: list[float], level: float) -> dict[str, Any]:
    def per_1k_tokens(t: dict[str, Any]) -> float | None:
        tokens = t["input_tokens"] + t["output_tokens"]
        return t["cost"] / tokens * 1000 if t["costed"] and tokens else None

    per_request = compare_means("cost_per_request", ca, cb, level).as_dict()
    scaled = {k: (v * 1000 if isinstance(v, float) else [x * 1000 if x is not None else None for x in v]
                  if isinstance(v, list) else v)
              for k, v in per_request.items() if k in ("mean_a", "mean_b", "diff", "ci")}
    return {
        "per_1k_requests": {"a": scaled.get("mean_a"), "b": scaled.get("mean_b"), "diff": scaled.get("diff"),
                            "ci": scaled.get("ci"), "p_value": per_request.get("p_value"),
                            "n_a": per_request["n_a"], "n_b": per_request["n_b"], "test": per_request["test"]},
        "per_1k_tokens": {"a": per_1k_tokens(ta), "b": per_1k_tokens(tb)},
        "total": {"a": ta["cost"], "b": tb["cost"]},
        "requests_with_cost": {"a": ta["costed"], "b": tb["costed"]},
    }


def _embedder(store: Any, settings: SemanticSettings | None) -> Any:
    try:
        import torch  # noqa: F401  (the checks extra)

        from monitor.checks.embeddings import Embedder
    except ImportError:
        return None
    return Embedder(settings, store)


def _semantic(store: Any, embedder: Any, a: q.Side, b: q.Side, start: datetime, end: datetime) -> dict[str, Any]:
    if embedder is None:
        return {"skipped": "needs the checks extra: pip install 'llm-monitor[checks]'"}
    xa = q.texts(store, a, start, end, _SEMANTIC_SAMPLE)
    xb = q.texts(store, b, start, end, _SEMANTIC_SAMPLE)
    if len(xa) < 10 or len(xb) < 10:
        return {"skipped": f"too few answers to compare ({len(xa)} and {len(xb)}; 10 needed on each side)"}
    from monitor.checks.semantic import mmd_test

    ea, eb = embedder.embed(xa), embedder.embed(xb)
    r = mmd_test(ea, eb, permutations=1000, seed=17)
    return {"test": "MMD permutation test on answer embeddings (all-MiniLM-L6-v2)", "mmd2": r.statistic,
            "p_value": r.p_value, "n_a": len(xa), "n_b": len(xb), "permutations": r.permutations}


def _pairs(n: int, rows: list[dict[str, Any]], embedder: Any, examples: int) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs": n, "shown": len(rows)}
    if not rows:
        return out
    answered = [r for r in rows if not r["error_a"] and not r["error_b"]]
    out["both_answered"] = len(answered)
    out["both_refused"] = sum(1 for r in answered if r["refusal_a"] and r["refusal_b"])
    out["one_refused"] = sum(1 for r in answered if bool(r["refusal_a"]) != bool(r["refusal_b"]))
    out["refused_only_a"] = sum(1 for r in answered if r["refusal_a"] and not r["refusal_b"])
    out["refused_only_b"] = sum(1 for r in answered if r["refusal_b"] and not r["refusal_a"])
    out["identical"] = sum(1 for r in answered if r["completion_a"] == r["completion_b"])
    out["one_failed"] = sum(1 for r in rows if bool(r["error_a"]) != bool(r["error_b"]))
    lat = [(r["latency_a"], r["latency_b"]) for r in answered if r["latency_a"] and r["latency_b"]]
    if lat:
        ratios = sorted(lb / la for la, lb in lat if la > 0)
        if ratios:
            out["latency_ratio_median"] = ratios[len(ratios) // 2]
    sims: list[float | None] = [None] * len(answered)
    if embedder is not None and answered:
        scored = answered[:_PAIRS_EMBEDDED]
        ea = embedder.embed([r["completion_a"] for r in scored])
        eb = embedder.embed([r["completion_b"] for r in scored])
        cos = (ea * eb).sum(dim=1).clamp(-1, 1).tolist()  # unit vectors: the dot product is the cosine
        for i, c in enumerate(cos):
            sims[i] = float(c)
        got = sorted(c for c in cos)
        out["similarity"] = {"median": got[len(got) // 2], "mean": sum(got) / len(got),
                             "under_0_5": sum(1 for c in got if c < 0.5) / len(got), "n": len(got),
                             "method": "cosine of all-MiniLM-L6-v2 embeddings of the two answers"}
    worst = sorted(range(len(answered)), key=lambda i: (_disagreement(answered[i], sims[i])), reverse=True)
    out["most_disagreeing"] = [{
        "trace_id": answered[i]["trace_id"], "prompt": answered[i]["prompt"][:300],
        "answer_a": answered[i]["completion_a"][:300], "answer_b": answered[i]["completion_b"][:300],
        "similarity": sims[i], "refused_a": bool(answered[i]["refusal_a"]), "refused_b": bool(answered[i]["refusal_b"]),
    } for i in worst[:examples]]
    return out


def _disagreement(r: dict[str, Any], sim: float | None) -> float:
    """Larger is more different: one refused beats any similarity; else 1 - cosine (or inequality)."""
    if bool(r["refusal_a"]) != bool(r["refusal_b"]):
        return 3.0
    if sim is not None:
        return 1.0 - sim
    return 0.0 if r["completion_a"] == r["completion_b"] else 1.0


# -- text -------------------------------------------------------------------------------------------

def _n(v: Any, unit: str = "", digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if unit == "%":
        return f"{v * 100:.{max(0, digits - 2)}f}%"
    return f"{v:.{digits}g}{unit}"


def _p(v: Any) -> str:
    return "-" if v is None else (f"{v:.2g}" if v >= 1e-4 else f"{v:.1e}")


def render(r: dict[str, Any]) -> str:
    """The comparison as a table for people."""
    sa, sb = r["sides"]["a"], r["sides"]["b"]
    lines = [f"A = {r['a']}  vs  B = {r['b']}   ({r['window']['from']} .. {r['window']['to']})",
             (f"requests: A {sa['requests']} ({sa['shadow_requests']} shadow)   B {sb['requests']} "
              f"({sb['shadow_requests']} shadow)"), "",
             (f"{'metric':<22}{'A median':>11}{'B median':>11}{'A p95':>11}{'B p95':>11}{'B-A median (95% CI)':>30}"
              f"{'p95 ratio (CI)':>22}{'p (MW)':>9}")]
    for m, d in r["distributions"].items():
        ci = d.get("median_diff_ci")
        rci = d.get("p95_ratio_ci")
        lines.append(
            f"{m:<22}{_n(d['median_a']):>11}{_n(d['median_b']):>11}{_n(d['p95_a']):>11}{_n(d['p95_b']):>11}"
            f"{(_n(d.get('median_diff')) + (f' ({_n(ci[0])}..{_n(ci[1])})' if ci else '')):>30}"
            f"{(_n(d.get('p95_ratio')) + (f' ({_n(rci[0])}..{_n(rci[1])})' if rci else '')):>22}"
            f"{_p(d.get('p_value')):>9}")
    lines += ["", f"{'rate':<24}{'A':>14}{'B':>14}{'B-A (95% CI)':>30}{'p (z)':>9}"]
    for name, d in r["rates"].items():
        ci = d.get("ci")
        rate_a = f"{_n(d['rate_a'], '%')} ({d['x_a']}/{d['n_a']})"
        rate_b = f"{_n(d['rate_b'], '%')} ({d['x_b']}/{d['n_b']})"
        diff = _n(d.get("diff"), "%") + (f" ({_n(ci[0], '%')}..{_n(ci[1], '%')})" if ci else "")
        lines.append(f"{name:<24}{rate_a:>14}{rate_b:>14}{diff:>30}{_p(d.get('p_value')):>9}")
    c = r["cost"]
    k = c["per_1k_requests"]
    ci = f" (95% CI {_n(k['ci'][0], '', 4)}..{_n(k['ci'][1], '', 4)}, p {_p(k['p_value'])})" if k.get("ci") else ""
    lines += ["", f"cost per 1k requests: A {_n(k['a'], '', 4)}  B {_n(k['b'], '', 4)}  B-A {_n(k['diff'], '', 4)}"
              + ci + f"; per 1k tokens: A {_n(c['per_1k_tokens']['a'], '', 4)}  B {_n(c['per_1k_tokens']['b'], '', 4)}"]
    s = r["semantic"]
    lines.append("semantic: " + (s["skipped"] if "skipped" in s else
                                 f"MMD² {s['mmd2']:.4g}, p {_p(s['p_value'])} ({s['n_a']} vs {s['n_b']} answers)"))
    pr = r["pairs"]
    line = f"shadow pairs: {pr['pairs']}"
    if pr.get("shown"):
        line += (f"; both refused {pr['both_refused']}, one refused {pr['one_refused']}, identical {pr['identical']}"
                 f" of {pr['both_answered']}")
        if "similarity" in pr:
            line += f"; answer similarity median {pr['similarity']['median']:.3f}"
        if "latency_ratio_median" in pr:
            line += f"; B/A latency median {pr['latency_ratio_median']:.2f}"
    lines.append(line)
    for e in pr.get("most_disagreeing", [])[:5]:
        sim = "-" if e["similarity"] is None else f"{e['similarity']:.2f}"
        lines.append(f"  [{sim}] {e['prompt'][:70]!r}: A {e['answer_a'][:50]!r} | B {e['answer_b'][:50]!r}")
    return "\n".join(lines)
