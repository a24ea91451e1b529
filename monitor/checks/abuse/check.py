"""The ``abuse`` check: extraction and abuse signals per client, each verdict naming the client.

Per scope (model, group) and current window it reads the clients' figures
(:mod:`~monitor.checks.abuse.data`), runs the signals (:mod:`~monitor.checks.abuse.signals`) and
returns, per signal (the result's ``metric``):

- one ``fail`` result per flagged client: ``details.client`` is its id (the key hash, or
  ``user:<id>``), ``details.summary`` one line for people (it reaches the alert notification),
  ``details.evidence`` the counts, ``details.examples`` a few of its prompts as stored (redacted);
- or, when no client is flagged, one ``ok`` result (value: the highest score, details: the top
  clients), or ``insufficient_data`` when no client had enough requests to be judged.

Metrics: ``volume``, ``templated_prompts``, ``topic_coverage`` (with PRADA's test as evidence),
``logprob_extraction``, ``jailbreak``. Alert rules match them like any other (``check: abuse``, ``metric: "*"``). The
reference window is not used: a client is compared with its own earlier windows and its peers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from monitor.checks.abuse import data
from monitor.checks.abuse.signals import (ClientStats, Finding, coverage, jailbreak, logprob_extraction,
                                          templated, volume)
from monitor.checks.base import CheckContext, Result

if TYPE_CHECKING:
    from monitor.config import ChecksSettings

__all__ = ["AbuseCheck", "METRICS"]

log = logging.getLogger("monitor.checks")

METRICS = ("volume", "templated_prompts", "topic_coverage", "logprob_extraction", "jailbreak")
_METHOD = {"volume": "robust_z", "templated_prompts": "template_share", "topic_coverage": "robust_z",
           "logprob_extraction": "share", "jailbreak": "fisher"}


def _short(client: str) -> str:
    return client if len(client) <= 40 else client[:37] + "..."


def _summary(metric: str, f: Finding, s: ClientStats) -> str:
    e = f.evidence
    who = f"client {_short(f.client)}"
    if metric == "volume":
        parts = [f"{e['current']} {e['measure']}"]
        if "own_ratio" in e:
            parts.append(f"{e['own_ratio']}x its own median")
        if "peer_ratio" in e:
            parts.append(f"{e['peer_ratio']}x the peers' median")
        return f"{who}: " + ", ".join(parts)
    if metric == "templated_prompts":
        t = e["templates"][0]["template"] if e.get("templates") else ""
        return f"{who}: {e['templated']} of {e['distinct']} distinct prompts fit one template: {t[:90]}"
    if metric == "topic_coverage":
        return (f"{who}: prompt spread {e['spread']} (peers {e.get('peer_median_spread')}, z {e.get('peer_z')}), "
                f"{e['repetition']:.0%} repeated, {s.requests} requests"
                + (", query distances not normal (PRADA)" if e.get("prada_nonnormal") else ""))
    if metric == "logprob_extraction":
        return (f"{who}: {e['extraction_requests']} of {e['requests']} requests read logprobs with one-token "
                f"answers ({e['logit_bias_requests']} with logit_bias, {e['short_prompts']} short prompts)")
    if metric == "jailbreak":
        return (f"{who}: {e['attempts']} of {e['requests']} requests are injection attempts or refused "
                f"({e['rate']:.0%} vs {e['rest_rate'] or 0:.1%} for everyone else)")
    return who


class AbuseCheck:
    """See the module docstring; ``embedder``: a :class:`~monitor.checks.embeddings.Embedder` for the
    coverage signals (default: one per run from ``checks.semantic`` over the run's store; the model
    itself is loaded once per process)."""

    name = "abuse"

    def __init__(self, settings: ChecksSettings, embedder: Any = None):
        self.settings = settings
        self._embedder = embedder
        self.last_findings: dict[str, list[Finding]] = {}

    def warm_up(self) -> None:
        if self.settings.abuse.coverage:
            import scipy.stats  # noqa: F401

    def _embed(self, ctx: CheckContext, texts: list[str]):
        from monitor.checks.embeddings import Embedder

        embedder = self._embedder or Embedder(self.settings.semantic, store=ctx.store)  # the model is shared
        return embedder.embed(texts, cancel=ctx.cancel).cpu().numpy()

    def run(self, ctx: CheckContext) -> list[Result]:
        from monitor.checks.windows import parse_duration

        a = self.settings.abuse
        stats = data.client_stats(ctx, a.short_prompt_chars)
        judged = sorted(c for c, s in stats.items() if s.requests >= a.min_requests)
        ctx.check_cancelled()
        hist = data.history(ctx, judged, parse_duration(a.history))
        samples = data.prompt_samples(ctx, judged, a.sample)
        ctx.check_cancelled()
        findings: dict[str, list[Finding]] = {
            "volume": volume(stats, hist, a),
            "templated_prompts": templated(samples, stats, a),
            "logprob_extraction": logprob_extraction(stats, a),
            "jailbreak": jailbreak(stats, a),
        }
        if a.coverage:
            emb = {}
            for c in judged:
                latest = list(dict.fromkeys(samples.get(c, [])))[:a.coverage_sample][::-1]  # oldest first
                if len(latest) >= 10:
                    emb[c] = latest
            vectors = {}
            if emb:
                flat = [t for texts in emb.values() for t in texts]
                allv = self._embed(ctx, flat)
                i = 0
                for c, texts in emb.items():
                    vectors[c] = allv[i:i + len(texts)]
                    i += len(texts)
            findings["topic_coverage"] = coverage(vectors, stats, a)
        self.last_findings = findings  # for the bench and tests: every client's score, not only verdicts
        anonymous = data.anonymous_requests(ctx)
        out: list[Result] = []
        for metric in METRICS:
            if metric in findings:
                out.extend(self._results(ctx, metric, findings[metric], stats, anonymous))
        return out

    def _threshold(self, metric: str) -> float:
        a = self.settings.abuse
        return {"volume": a.volume_peer_z, "templated_prompts": a.template_share, "topic_coverage": a.coverage_z,
                "logprob_extraction": a.logprob_share, "jailbreak": a.jailbreak_alpha}[metric]

    def _results(self, ctx: CheckContext, metric: str, found: list[Finding], stats: dict[str, ClientStats],
                 anonymous: int) -> list[Result]:
        a = self.settings.abuse
        allow = set(a.allow_clients)
        flagged = [f for f in found if f.flagged and f.client not in allow]
        base = dict(check="abuse", metric=metric, method=_METHOD[metric], threshold=self._threshold(metric))
        out = []
        for f in sorted(flagged, key=lambda f: f.client):
            s = stats[f.client]
            details = {"client": f.client, "summary": _summary(metric, f, s), "evidence": f.evidence,
                       "requests": s.requests, "tokens": s.tokens,
                       "examples": data.examples(ctx, f.client, metric, a.examples, a.short_prompt_chars)}
            out.append(Result(**base, status="fail", value=f.score, current_n=s.requests,
                              p_value=f.score if metric == "jailbreak" else None, details=details))
        if out:
            return out
        total = sum(s.requests for s in stats.values())
        if not stats:  # no identified client at all: no verdict (an alert holds its state)
            return [Result(**base, status="insufficient_data", current_n=total,
                           details={"clients": 0, "anonymous_requests": anonymous,
                                    "reason": "no request in the window carried a client identity"})]
        # Clients too small to judge (under min_requests, no attempts) are not abusive on this signal: ok.
        scored = [f for f in found if f.score is not None]
        low_is_bad = metric == "jailbreak"
        top = sorted(scored, key=lambda f: f.score, reverse=not low_is_bad)[:3]
        return [Result(**base, status="ok", value=top[0].score if top else None, current_n=total,
                       details={"clients": len(stats), "judged": len(found), "anonymous_requests": anonymous,
                                "top": [{"client": f.client, "score": f.score} for f in top]})]
