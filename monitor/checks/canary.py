"""The ``canary`` check: is the candidate (a new version, an adapter, another endpoint) not worse than
the incumbent, on the same window, by more than the margins of ``checks.canary``?

Both sides are read over the check's *current* window (they served the same period, and with shadow
traffic the same prompts); the reference window is not used. Each configured margin is one result
(``metric``), judged by :func:`monitor.checks.compare.stats.non_inferior` from a confidence interval at
level 1 - 2 alpha (a one-sided test at ``alpha`` each way):

- ``latency_p95`` / ``ttft_p95``: bootstrap CI of p95(candidate) / p95(incumbent) - 1 against
  ``latency_p95_max_increase`` (0.2: at most 20 % worse);
- ``refusal_rate``, ``error_rate``, ``truncation_rate``, ``invalid_json_rate``,
  ``language_mismatch_rate``: Newcombe CI of the difference in points (0.02: 2 points);
- ``cost_per_request``: Welch CI of mean(candidate) / mean(incumbent) - 1.

``ok``: the upper bound is within the margin (non-inferiority shown); ``fail``: the lower bound is
past it (worse beyond the margin, shown); ``warn``: neither shown; ``insufficient_data``: fewer
than ``checks.canary.min_samples`` requests on a side. A ``verdict`` result sums them up (the worst
of the metrics, with the reasons). The check runs once per run, in the candidate's model scope, so
``monitor check`` exits 1 on a failed canary and alert rules with ``check: canary`` fire on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.checks.base import CheckContext, Result, worst
from monitor.checks.compare import queries as q
from monitor.checks.compare.stats import (
    Verdict,
    bootstrap_diff,
    compare_means,
    compare_rates,
    non_inferior,
)

if TYPE_CHECKING:
    from monitor.config import CanarySettings

__all__ = ["CanaryCheck"]

_RATES = ("refusal_rate", "error_rate", "truncation_rate", "invalid_json_rate", "language_mismatch_rate")


class CanaryCheck:
    name = "canary"

    def __init__(self, canary: CanarySettings) -> None:
        """``canary``: the ``checks.canary`` section (its ``candidate`` set)."""
        self.canary = canary
        self.candidate = q.parse_side(self.canary.candidate)
        self.incumbent = q.parse_side(self.canary.incumbent)

    def run(self, ctx: CheckContext) -> list[Result]:
        if ctx.scope.model != self.candidate.model or ctx.scope.group:
            return []  # once per run: in the candidate's model scope
        c = self.canary
        start, end = ctx.current.start, ctx.current.end
        tc = q.totals(ctx.store, self.candidate, start, end)
        ti = q.totals(ctx.store, self.incumbent, start, end)
        base = {"candidate": self.candidate.label(), "incumbent": self.incumbent.label(),
                "window": ctx.current.iso()}
        if tc["requests"] < c.min_samples or ti["requests"] < c.min_samples:
            return [Result(check=self.name, metric="verdict", status="insufficient_data", current_n=tc["requests"],
                           reference_n=ti["requests"], method="non-inferiority",
                           details={**base, "reason": f"{tc['requests']} candidate and {ti['requests']} incumbent "
                                                      f"requests; {c.min_samples} needed on each side"})]
        level = 1 - 2 * c.alpha
        verdicts: list[Verdict] = []
        need_values = any(m is not None for m in (c.latency_p95_max_increase, c.ttft_p95_max_increase,
                                                  c.cost_per_request_max_increase))
        vc = q.values(ctx.store, self.candidate, start, end) if need_values else {}
        vi = q.values(ctx.store, self.incumbent, start, end) if need_values else {}
        for metric, column, margin in (("latency_p95", "latency_ms", c.latency_p95_max_increase),
                                       ("ttft_p95", "ttft_ms", c.ttft_p95_max_increase)):
            if margin is None:
                continue
            verdicts.append(_p95(metric, vi[column], vc[column], margin, level, c.min_samples))
        for name in _RATES:
            margin = getattr(c, f"{name}_max_increase")
            if margin is None:
                continue
            (xi, ni), (xc, nc) = ti["rates"][name], tc["rates"][name]
            if ni < c.min_samples or nc < c.min_samples:
                verdicts.append(Verdict(name, "insufficient_data", None, None, margin,
                                        f"{nc} and {ni} requests where it applies"))
                continue
            d = compare_rates(name, xi, ni, xc, nc, level)
            v = non_inferior(name, d.diff, d.ci, margin, unit="pt")
            v.details = {"candidate": [xc, nc], "incumbent": [xi, ni], "p_value_two_sided": d.p_value}
            verdicts.append(v)
        if c.cost_per_request_max_increase is not None:
            m = compare_means("cost", vi["cost"], vc["cost"], level)
            if m.diff is None or not m.mean_a:
                verdicts.append(Verdict("cost_per_request", "insufficient_data", None, None,
                                        c.cost_per_request_max_increase, "no costs on both sides"))
            else:
                rel = (m.diff / m.mean_a, (m.ci[0] / m.mean_a, m.ci[1] / m.mean_a))  # type: ignore[index]
                verdicts.append(non_inferior("cost_per_request", rel[0], rel[1], c.cost_per_request_max_increase,
                                             unit="%"))
        out = [Result(check=self.name, metric=v.metric, status=v.status, value=v.estimate, threshold=v.margin,
                      method="non-inferiority", current_n=tc["requests"], reference_n=ti["requests"],
                      details={**base, "reason": v.reason, "ci": list(v.ci) if v.ci else None,
                               "level": level, **v.details}) for v in verdicts]
        status = worst([v.status for v in verdicts if v.status != "insufficient_data"]) if verdicts else "ok"
        if verdicts and all(v.status == "insufficient_data" for v in verdicts):
            status = "insufficient_data"
        bad = [v for v in verdicts if v.status == status and status in ("fail", "warn")]
        reason = ("; ".join(f"{v.metric} {v.reason}" for v in bad) if bad else
                  f"every margin shown to hold ({', '.join(v.metric for v in verdicts if v.status == 'ok')})")
        out.append(Result(check=self.name, metric="verdict", status=status, method="non-inferiority",
                          current_n=tc["requests"], reference_n=ti["requests"],
                          details={**base, "reason": reason, "alpha": c.alpha,
                                   "metrics": {v.metric: v.status for v in verdicts}}))
        return out


def _p95(metric: str, incumbent: list[float], candidate: list[float], margin: float, level: float,
         min_n: int) -> Verdict:
    if len(incumbent) < min_n or len(candidate) < min_n:
        return Verdict(metric, "insufficient_data", None, None, margin,
                       f"{len(candidate)} and {len(incumbent)} values")
    (_, _, _, ratio, lo, hi), = bootstrap_diff(incumbent, candidate, (0.95,), level)
    v = non_inferior(metric, ratio - 1, (lo - 1, hi - 1), margin, unit="%")
    v.details = {"p95_ratio": ratio, "candidate_n": len(candidate), "incumbent_n": len(incumbent)}
    return v
