"""Rule matching: which results of one check run match a rule, grouped into one alert per scope.

Pure functions over a :class:`~monitor.checks.runner.RunReport`: no store, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from monitor.checks.base import Result

__all__ = ["Match", "match_rule", "alert_id", "result_summary", "describe"]

_ORDER = {"ok": 1, "warn": 2, "fail": 3}


@dataclass
class Match:
    """One alert key of one rule in one run.

    ``evaluated`` is False when the run had no verdict for it (the scope was absent, every matching
    result was ``insufficient_data``): the alert then keeps its state instead of resolving.
    """

    model: str
    group: str
    evaluated: bool = False
    hits: list[Result] = field(default_factory=list)


def alert_id(rule: str, model: str, group: str) -> str:
    """Stable id of one alert: the same rule, model and group always give the same id."""
    return hashlib.sha256(f"{rule}\x1f{model}\x1f{group}".encode()).hexdigest()[:24]


def _verdict(rule, r: Result, min_samples: int) -> bool | None:
    if rule.above is not None:
        if r.value is None or r.value != r.value or r.current_n < min_samples:
            return None
        return r.value > rule.above
    if r.status not in _ORDER:
        return None
    return _ORDER[r.status] >= _ORDER[rule.status]


def match_rule(rule, report, min_samples: int) -> dict[tuple[str, str], Match]:
    """``{(model, group): Match}`` for every scope of ``report`` the rule applies to."""
    out: dict[tuple[str, str], Match] = {}
    for sr in report.scopes:
        model = sr.scope.model
        if rule.models and not any(fnmatchcase(model, m) for m in rule.models):
            continue
        key = (model, sr.scope.label())
        for r in sr.results:
            # "error" is the runner's stand-in for a check that raised: no verdict either way
            if r.check != rule.check or r.metric == "error" or not fnmatchcase(r.metric, rule.metric):
                continue
            verdict = _verdict(rule, r, min_samples)
            if verdict is None:
                continue
            m = out.setdefault(key, Match(*key))
            m.evaluated = True
            if verdict:
                m.hits.append(r)
    return out


def result_summary(r: Result) -> dict[str, Any]:
    """What a notification says about one result. Scalars only: result details can hold example
    prompts and completions, which stay in ClickHouse rather than go to a chat channel."""
    small = {k: v for k, v in r.details.items()
             if isinstance(v, (int, float, bool)) or isinstance(v, str) and len(v) <= 200}
    return {"check": r.check, "metric": r.metric, "status": r.status, "value": _num(r.value),
            "reference_value": _num(r.reference_value), "threshold": _num(r.threshold), "p_value": _num(r.p_value),
            "method": r.method, "current_n": int(r.current_n), "reference_n": int(r.reference_n), "details": small}


def _num(v):
    return None if v is None or v != v or v in (float("inf"), float("-inf")) else float(v)


def describe(rule, model: str, group: str, hits: list[Result], event: str) -> str:
    """One line for people: ``[critical] latency-drift fired on llama-3-8b: feature_drift decode_ms fail (...)``."""
    where = model + (f" [{group}]" if group else "")
    if event == "resolve":
        return f"[resolved] {rule.name} on {where}: {rule.check} {rule.metric} back to normal"
    parts = []
    for r in hits[:5]:
        bits = []
        if r.value is not None:
            bits.append(f"value {r.value:.4g}")
        if rule.above is not None:
            bits.append(f"above {rule.above:g}")
        elif r.threshold is not None:
            bits.append(f"threshold {r.threshold:.4g}")
        if r.p_value is not None:
            bits.append(f"p {r.p_value:.3g}")
        who = f" client {r.details['client']}" if isinstance(r.details.get("client"), str) else ""  # abuse verdicts
        parts.append(f"{r.metric}{who} {r.status}" + (f" ({', '.join(bits)})" if bits else ""))
    more = f", +{len(hits) - 5} more" if len(hits) > 5 else ""
    return f"[{rule.severity}] {rule.name} fired on {where}: {rule.check} " + ", ".join(parts) + more
