"""Printing check results for people (``monitor check``)."""

from __future__ import annotations

__all__ = ["render"]

_MARK = {"fail": "FAIL", "warn": "warn", "ok": "ok", "insufficient_data": "n/a"}


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(report: dict, verbose: bool = False) -> str:
    lines = [f"checks {report['run_id']} at {report['at']}: {report['status'].upper()} ({report['seconds']:.1f}s)"]
    if not report["scopes"]:
        lines.append("no model had events in the window (point a server or the demo at the monitor first)")
    for s in report["scopes"]:
        scope = s["model"] + (f" [{s['group']}]" if s["group"] else "")
        lines.append(f"\n{scope}: current {s['current']}  vs {s['reference_kind']} {s['reference']}")
        lines.append(f"  {'status':<5} {'check':<15} {'metric':<24} {'value':>10} {'reference':>10} "
                     f"{'threshold':>10} {'p-value':>9}  n (cur/ref)")
        for r in s["results"]:
            if not verbose and r["status"] == "ok":
                continue
            lines.append(f"  {_MARK[r['status']]:<5} {r['check']:<15} {r['metric']:<24} {_num(r['value']):>10} "
                         f"{_num(r['reference_value']):>10} {_num(r['threshold']):>10} {_num(r['p_value']):>9}  "
                         f"{r['current_n']}/{r['reference_n']}")
            for c in (r.get("details") or {}).get("clusters", [])[:3]:
                if abs(c.get("change", 0)) > 0:
                    ex = "; ".join(str(e)[:80] for e in c.get("examples", [])[:2])
                    lines.append(f"        cluster '{c.get('label', '')}': {c.get('reference_share', 0):.0%} -> "
                                 f"{c.get('current_share', 0):.0%}  e.g. {ex}")
        ok = sum(r["status"] == "ok" for r in s["results"])
        if ok and not verbose:
            lines.append(f"  ({ok} checks ok; --verbose lists them)")
    return "\n".join(lines)
