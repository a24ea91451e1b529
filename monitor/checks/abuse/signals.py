"""The abuse signals, as pure functions over one window's per-client figures (no store, no clock).

Each function takes what :mod:`monitor.checks.abuse.data` read (or what a test or the bench built)
and the ``checks.abuse`` settings, and returns one :class:`Finding` per client it judged: its score,
whether it is flagged, and the evidence (counts) a verdict shows. :mod:`monitor.checks.abuse.check`
turns findings into check results.

- :func:`volume`: the client's requests and tokens against its own earlier windows (robust z:
  median and MAD, with a Poisson floor so a steady client's MAD of 0 does not make every change
  infinite) and against its peers in the same window (robust z of the log, leave-one-out). Both
  must be far out (a client without enough history is judged against its peers alone).
- :func:`templated`: prompts that fit a one-slot template: two prompts of the client share a
  prefix and a suffix that together cover most of their words, and differ in between. Found
  among neighbours in prefix order and in suffix order (so a slot at either end is found too), in
  ``O(n log n)``. Repeating one prompt is not templating: prompts are deduplicated first.
- :func:`logprob_extraction`: requests asking for log probabilities with a one-token answer and a
  trivially short prompt or a logit bias (the logit read-out of Carlini et al. 2024).
- :func:`jailbreak`: injection attempts and refusals of one client against everyone else's, one-sided
  Fisher exact test, Bonferroni over the clients.
- :func:`coverage`: embedding-space spread of the client's prompts (mean pairwise cosine distance)
  against its peers', with little repetition; with PRADA's test (Juuti et al. 2019) on the distances
  of each query to the client's earlier ones (Shapiro-Wilk) as evidence.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from monitor.config import AbuseSettings

__all__ = ["ClientStats", "Finding", "robust_z", "volume", "templated", "template_of", "logprob_extraction",
           "jailbreak", "coverage", "prada", "peer_median"]

_MAD = 1.4826
"""MAD -> standard deviation under normality."""
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass
class ClientStats:
    """One client's counts in the current window (one aggregate query)."""

    client: str
    requests: int
    input_tokens: int = 0
    output_tokens: int = 0
    distinct_prompts: int = 0
    errors: int = 0
    refusals: int = 0
    injections: int = 0
    attempts: int = 0
    """Requests whose prompt is an injection attempt or whose answer was a refusal."""
    logprob_requests: int = 0
    top_logprobs_max: int = 0
    logit_bias_requests: int = 0
    one_token: int = 0
    """Requests with ``max_tokens <= 1``."""
    short_prompts: int = 0
    extraction: int = 0
    """Requests with logprobs, ``max_tokens <= 1`` and a short prompt or a logit bias."""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Finding:
    client: str
    score: float | None
    flagged: bool
    evidence: dict[str, Any] = field(default_factory=dict)


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def robust_z(x: float, sample: Sequence[float], floor: float = 0.0) -> tuple[float, float, float]:
    """``(z, median, scale)`` of ``x`` against ``sample``: ``(x - median) / scale`` with scale
    ``1.4826 * MAD``, at least ``floor`` (and never 0)."""
    med = _median(sample)
    mad = _median([abs(v - med) for v in sample])
    scale = max(_MAD * mad, floor, 1e-9)
    return (x - med) / scale, med, scale


# -- volume -----------------------------------------------------------------------------------

def volume(stats: dict[str, ClientStats], history: dict[str, list[tuple[int, int]]], settings: AbuseSettings
           ) -> list[Finding]:
    """Requests and tokens of each client (with ``min_requests``) against its own earlier windows
    (``history[client]``: ``(requests, tokens)`` per earlier window, oldest first, from its first
    active one) and its peers'. Score: the smaller of the own and the peer z (each over its
    threshold) of the measure that is furthest out; a client without ``min_history_windows`` is
    judged on its peers alone, at ``volume_new_z``."""
    active = {c: s for c, s in stats.items() if s.requests > 0}
    out = []
    for c, s in active.items():
        if s.requests < settings.min_requests:
            continue
        peers = [p for k, p in active.items() if k != c]
        best: Finding | None = None
        for measure, x in (("requests", s.requests), ("tokens", s.tokens)):
            if x <= 0:
                continue
            ev: dict[str, Any] = {"measure": measure, "current": x}
            if len(peers) >= settings.min_clients:
                vals = [math.log(max(getattr(p, measure), 1)) for p in peers]
                zp, med, _ = robust_z(math.log(x), vals, floor=0.25)
                ev.update(peer_z=round(zp, 2), peer_median=round(math.exp(med), 1),
                          peer_ratio=round(x / max(math.exp(med), 1e-9), 2), peers=len(peers))
            else:
                zp = None
            hist = [h[0] if measure == "requests" else h[1] for h in history.get(c, [])]
            known = len(hist) >= settings.min_history_windows
            peer_hit = zp is not None and ev["peer_ratio"] >= settings.volume_min_ratio and \
                zp >= (settings.volume_peer_z if known else max(settings.volume_peer_z, settings.volume_new_z))
            if known:
                zo, med, _ = robust_z(x, hist, floor=math.sqrt(max(_median(hist), 1.0)) *
                                      (1.0 if measure == "requests" else max(s.tokens / s.requests, 1.0)))
                ev.update(own_z=round(zo, 2), own_median=med, own_ratio=round(x / max(med, 1.0), 2),
                          history_windows=len(hist))
                own_hit = zo >= settings.volume_z and ev["own_ratio"] >= settings.volume_min_ratio
                score = min(zo / settings.volume_z, (zp / settings.volume_peer_z) if zp is not None else 0.0)
            else:
                ev["history_windows"] = len(hist)
                own_hit = True  # a new client: its peers decide, at the stricter volume_new_z
                score = (zp / max(settings.volume_peer_z, settings.volume_new_z)) if zp is not None else None
            f = Finding(c, score, bool(peer_hit and own_hit), ev)
            if best is None or (f.flagged, f.score or -1e9) > (best.flagged, best.score or -1e9):
                best = f
        if best is not None:
            out.append(best)
    return out


# -- templates --------------------------------------------------------------------------------

def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text.lower()))


def _lcp(a: Sequence[str], b: Sequence[str]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _fixed(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Words two prompts share as a prefix plus a suffix (never overlapping)."""
    p = _lcp(a, b)
    s = _lcp(a[::-1], b[::-1])
    return min(p + s, min(len(a), len(b)))


def template_of(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    """``prefix {…} suffix`` of two prompts' shared words."""
    p = _lcp(a, b)
    s = min(_lcp(a[::-1], b[::-1]), min(len(a), len(b)) - p)
    return " ".join((*a[:p], "{…}", *(a[len(a) - s:] if s else ()))).strip()


def templated(prompts: dict[str, list[str]], stats: dict[str, ClientStats], settings: AbuseSettings,
              window: int = 4) -> list[Finding]:
    """Per client with ``min_requests``: the distinct prompts of its sample that fit a one-slot
    template with another of its prompts (their shared prefix + suffix cover at least
    ``template_fixed`` of the longer one's words, and at least 3 words). Flagged with at least
    ``template_min`` such prompts making up ``template_share`` of its distinct ones."""
    out = []
    for c, texts in prompts.items():
        s = stats.get(c)
        if s is None or s.requests < settings.min_requests:
            continue
        distinct = list(dict.fromkeys(t for t in texts if t))
        toks = [_tokens(t) for t in distinct]
        n = len(toks)
        if n < 2:
            out.append(Finding(c, 0.0, False, {"sampled": len(texts), "distinct": n, "templated": 0}))
            continue
        hit = [False] * n
        skeletons: Counter[str] = Counter()
        for order in (sorted(range(n), key=lambda i: toks[i]), sorted(range(n), key=lambda i: toks[i][::-1])):
            for pos, i in enumerate(order):
                for j in order[pos + 1:pos + 1 + window]:
                    a, b = toks[i], toks[j]
                    fixed = _fixed(a, b)
                    if fixed >= 3 and fixed >= settings.template_fixed * max(len(a), len(b)) and a != b:
                        if not (hit[i] and hit[j]):
                            skeletons[template_of(a, b)] += (not hit[i]) + (not hit[j])
                        hit[i] = hit[j] = True
        k = sum(hit)
        share = k / n
        ev = {"sampled": len(texts), "distinct": n, "templated": k, "share": round(share, 3),
              "templates": [{"template": t, "prompts": m} for t, m in skeletons.most_common(3)]}
        out.append(Finding(c, share, k >= settings.template_min and share >= settings.template_share, ev))
    return out


# -- logprob extraction -----------------------------------------------------------------------

def logprob_extraction(stats: dict[str, ClientStats], settings: AbuseSettings) -> list[Finding]:
    """Clients whose requests read out the token distribution: logprobs, one-token answers, and
    trivially short prompts or a logit bias, at least ``logprob_min`` times and ``logprob_share``
    of their requests."""
    out = []
    for c, s in stats.items():
        if s.logprob_requests == 0 or s.requests == 0:
            continue
        share = s.extraction / s.requests
        ev = {"requests": s.requests, "extraction_requests": s.extraction, "share": round(share, 3),
              "logprob_requests": s.logprob_requests, "top_logprobs_max": s.top_logprobs_max,
              "logit_bias_requests": s.logit_bias_requests, "one_token_requests": s.one_token,
              "short_prompts": s.short_prompts}
        out.append(Finding(c, share, s.extraction >= settings.logprob_min and share >= settings.logprob_share, ev))
    return out


# -- jailbreak concentration ------------------------------------------------------------------

def jailbreak(stats: dict[str, ClientStats], settings: AbuseSettings) -> list[Finding]:
    """One-sided Fisher exact test per client: are its attempts (injection-like prompts or refused
    requests) a larger share of its requests than of everyone else's? Bonferroni over the clients
    in the window; flagged below ``jailbreak_alpha / clients`` with ``jailbreak_min`` attempts."""
    from scipy.stats import fisher_exact

    total_n = sum(s.requests for s in stats.values())
    total_x = sum(s.attempts for s in stats.values())
    k = max(1, sum(1 for s in stats.values() if s.requests > 0))
    out = []
    for c, s in stats.items():
        if s.attempts < settings.jailbreak_min:
            continue
        rest_x, rest_n = total_x - s.attempts, total_n - s.requests
        p = float(fisher_exact([[s.attempts, s.requests - s.attempts], [rest_x, rest_n - rest_x]],
                               alternative="greater")[1]) if rest_n > 0 else 1.0
        ev = {"requests": s.requests, "attempts": s.attempts, "injections": s.injections, "refusals": s.refusals,
              "rate": round(s.attempts / s.requests, 4), "rest_rate": round(rest_x / rest_n, 4) if rest_n else None,
              "p_value": p, "bonferroni_k": k}
        out.append(Finding(c, p, p < settings.jailbreak_alpha / k, ev))
    return out


# -- embedding coverage and PRADA -------------------------------------------------------------

def _spread(e: Any) -> float:
    """Mean pairwise cosine distance of unit vectors ``e`` (n x d)."""
    n = e.shape[0]
    if n < 2:
        return 0.0
    s = e.sum(axis=0)
    return float(1.0 - (float(s @ s) - n) / (n * (n - 1)))


def prada(e: Any) -> tuple[float | None, float | None, int]:
    """PRADA's statistic on a client's queries in time order (unit vectors ``e``): the distance of
    each to the nearest earlier one, exact repeats (distance ~0) left out; ``(W, p, n)`` of the
    Shapiro-Wilk test on them (``None`` below 8 distances)."""
    import numpy as np
    from scipy.stats import shapiro

    n = e.shape[0]
    if n < 3:
        return None, None, 0
    sims = e @ e.T
    d = [1.0 - float(np.max(sims[i, :i])) for i in range(1, n)]
    d = [v for v in d if v > 1e-4]
    if len(d) < 8 or max(d) - min(d) < 1e-9:
        return None, None, len(d)
    w, p = shapiro(d)
    return float(w), float(p), len(d)


def coverage(embeddings: dict[str, Any], stats: dict[str, ClientStats], settings: AbuseSettings) -> list[Finding]:
    """The spread of each client's prompts (``embeddings[client]``: unit vectors, oldest first) as a
    robust z against its peers' spreads; flagged over ``coverage_z`` when at most
    ``coverage_max_repetition`` of its requests repeat a prompt. PRADA's Shapiro-Wilk test on the
    same vectors is part of the evidence (``prada_w``, ``prada_p``, ``prada_nonnormal`` below
    ``prada_alpha``), never a verdict by itself: natural text query streams are often not normal
    either (bench/abuse.py measures how often)."""
    spreads = {c: _spread(e) for c, e in embeddings.items() if e.shape[0] >= 10}
    out = []
    for c, sp in spreads.items():
        s = stats[c]
        repetition = 1.0 - s.distinct_prompts / s.requests if s.requests else 0.0
        peers = [v for k, v in spreads.items() if k != c]
        w, p, nd = prada(embeddings[c])
        ev: dict[str, Any] = {"spread": round(sp, 4), "embedded": int(embeddings[c].shape[0]),
                              "repetition": round(repetition, 3), "requests": s.requests,
                              "prada_w": None if w is None else round(w, 4), "prada_p": p, "prada_distances": nd,
                              "prada_nonnormal": p is not None and p < settings.prada_alpha}
        if len(peers) >= settings.min_clients:
            z, med, _ = robust_z(sp, peers, floor=0.02)
            ev.update(peer_z=round(z, 2), peer_median_spread=round(med, 4))
            out.append(Finding(c, z, z >= settings.coverage_z and repetition <= settings.coverage_max_repetition, ev))
    return out


def peer_median(stats: dict[str, ClientStats]) -> float | None:
    """The median client's requests in the window."""
    vals = [s.requests for s in stats.values() if s.requests > 0]
    return _median(vals) if vals else None

