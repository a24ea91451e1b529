"""Quality signals per window, compared with the reference by a one-sided proportion test.

The signals are columns filled at ingest by :func:`monitor.quality.analyse` (refusal, empty
output, truncation, invalid JSON where JSON was requested, PII in the output, degenerate
repetition, language mismatch) plus the error rate, so a window's rates are one aggregate query.
A signal fails when its current rate is higher than the reference's at ``checks.quality_alpha``.
"""

from __future__ import annotations

from monitor.checks.base import CheckContext, Result
from monitor.checks.stats import two_proportion_z

__all__ = ["QualityCheck", "SIGNALS"]

# signal -> (numerator SQL, denominator SQL)
SIGNALS: dict[str, tuple[str, str]] = {
    "refusal_rate": ("sum(refusal)", "count()"),
    "empty_rate": ("sum(empty_output)", "count()"),
    "truncation_rate": ("sum(truncated)", "count()"),
    "invalid_json_rate": ("countIf(json_valid = 0)", "countIf(json_valid IS NOT NULL)"),
    "pii_output_rate": ("countIf(pii_in_output > 0)", "count()"),
    "repetition_rate": ("sum(degenerate)", "count()"),
    "language_mismatch_rate": ("sum(language_mismatch)", "count()"),
    "error_rate": ("countIf(status_code = 'Error')", "count()"),
}
_EXAMPLE_CONDITION = {
    "refusal_rate": "refusal = 1", "empty_rate": "empty_output = 1", "truncation_rate": "truncated = 1",
    "invalid_json_rate": "json_valid = 0", "pii_output_rate": "pii_in_output > 0",
    "repetition_rate": "degenerate = 1", "language_mismatch_rate": "language_mismatch = 1",
    "error_rate": "status_code = 'Error'",
}


class QualityCheck:
    name = "quality"

    def _counts(self, ctx: CheckContext, which: str) -> dict[str, tuple[int, int]]:
        where, params = ctx.where(which)
        exprs = ", ".join(f"{num}, {den}" for num, den in SIGNALS.values())
        row = ctx.store.query_rows(f"SELECT {exprs} FROM {ctx.table} WHERE {where}", params)[0]
        return {name: (int(row[2 * i]), int(row[2 * i + 1])) for i, name in enumerate(SIGNALS)}

    def run(self, ctx: CheckContext) -> list[Result]:
        cur, ref = self._counts(ctx, "current"), self._counts(ctx, "reference")
        alpha = ctx.settings.quality_alpha
        out = []
        for name in SIGNALS:
            (x1, n1), (x2, n2) = cur[name], ref[name]
            r = Result(check=self.name, metric=name, status="ok", method="z", threshold=alpha, current_n=n1,
                       reference_n=n2, value=x1 / n1 if n1 else None, reference_value=x2 / n2 if n2 else None)
            if n1 < ctx.settings.min_samples or n2 < ctx.settings.min_samples:
                r.status = "insufficient_data"
            else:
                z, p = two_proportion_z(x1, n1, x2, n2)
                r.p_value = p
                r.details["z"] = z
                if p < alpha:
                    r.status = "fail"
                    r.details["examples"] = self._examples(ctx, name)
            r.details.update({"current_count": x1, "reference_count": x2})
            out.append(r)
        return out

    def _examples(self, ctx: CheckContext, name: str, n: int = 3) -> list[dict[str, str]]:
        where, params = ctx.where("current")
        rows = ctx.store.query_rows(
            f"SELECT trace_id, substring(prompt, 1, 300), substring(completion, 1, 300) FROM {ctx.table} "
            f"WHERE {where} AND {_EXAMPLE_CONDITION[name]} ORDER BY timestamp DESC LIMIT {int(n)}", params)
        return [{"trace_id": t, "prompt": p, "completion": c} for t, p, c in rows]
