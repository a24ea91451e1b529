"""Semantic drift of prompts and completions: an MMD permutation test on sentence embeddings,
explained by the clusters whose share changed.

The statistic is the **unbiased** squared maximum mean discrepancy (MMD²_u, Gretton et al.
2012, eq. 3: kernel means over distinct pairs only) with a Gaussian RBF kernel
``k(x, y) = exp(-|x - y|² / (2 σ²))``, σ the median pairwise distance of the pooled sample
(median heuristic, on at most 1,000 pooled points drawn with the seed). Its p-value comes from
``P`` random relabellings of the pooled sample: ``(1 + #{MMD²_u(perm) >= observed}) / (1 + P)``,
valid (never below the true size) at any ``P``. Ties count against drift.

Two ways to compute it, with the same statistic and the same permutations:

- ``exact`` (pooled size <= :data:`EXACT_MAX`): the ``N x N`` kernel is built once, double-centred
  (which leaves MMD²_u unchanged and keeps float32 sums small) with a zero diagonal, and the
  statistics of a chunk of permutations come from one product ``U @ K`` with ``U`` the chunk's
  0/1 membership rows: ``Sxx = rowsum((U K) * U)``, and ``Sxy``, ``Syy`` from ``U @ rowsum(K)``.
- ``rff`` (larger samples): the kernel is replaced by ``D`` random Fourier features ``Z``
  (:data:`RFF_DIM`), so ``Sxx = |U Z|² - U·diag``; cost ``O(N·D·P)`` instead of ``O(N²·P)``.
  The features are drawn once per test, independently of the labels, so the test stays exact
  for the (slightly different) random kernel; only its power depends on ``D``.

Everything runs on the device of the embeddings (CUDA when the embedder uses it); random
numbers come from one CPU generator seeded with ``seed``, so a result is reproducible.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

from monitor.checks.base import CheckContext, Result
from monitor.errors import Cancelled

if TYPE_CHECKING:
    import torch

    from monitor.checks.embeddings import Embedder
    from monitor.config import ChecksSettings, SemanticSettings

__all__ = [
    "SemanticDriftCheck",
    "MMDResult",
    "mmd_test",
    "mmd_permutation_test",
    "median_bandwidth",
    "kmeans",
    "explain_shift",
    "witness",
    "EXACT_MAX",
    "RFF_DIM",
]

log = logging.getLogger("monitor.checks")

EXACT_MAX = 4000
"""Pooled sample size up to which the exact kernel matrix is used (64 MB in float32)."""
RFF_DIM = 2048
"""Random Fourier features above :data:`EXACT_MAX` (kernel error ~ 1/sqrt(D) per pair)."""
BANDWIDTH_POINTS = 1000
"""Pooled points the median heuristic looks at (499,500 pairs)."""
_CHUNK_ELEMENTS = 4_000_000
"""Permutation chunk: ``chunk * N`` membership entries (16 MB) at a time."""
_TIE_TOL = 1e-7
"""A permuted statistic within this of the observed one counts as a tie (float32 rounding)."""
_FIELDS = ("prompt", "completion")
_MAX_CHARS = 10_000


# -- the test ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MMDResult:
    statistic: float
    """Unbiased MMD² of the observed split (can be slightly negative when there is no drift)."""
    p_value: float
    bandwidth: float
    """σ of the RBF kernel (median pairwise distance of the pooled sample)."""
    method: Literal["exact", "rff"]
    permutations: int
    features: int | None = None
    """Random Fourier features (``rff`` only)."""


def median_bandwidth(pooled: "torch.Tensor", generator: "torch.Generator",
                     max_points: int = BANDWIDTH_POINTS) -> float:
    """Median pairwise Euclidean distance of (at most ``max_points`` of) ``pooled``; 1.0 if all are equal."""
    import torch

    n = pooled.shape[0]
    if n > max_points:
        pick = torch.randperm(n, generator=generator)[:max_points].to(pooled.device)
        pooled = pooled[pick]
    d2 = _sqdist(pooled, pooled)
    iu = torch.triu_indices(d2.shape[0], d2.shape[0], offset=1, device=d2.device)
    med = float(d2[iu[0], iu[1]].median().clamp_min(0).sqrt())
    return med if med > 1e-12 else 1.0


def mmd_test(x: "torch.Tensor", y: "torch.Tensor", permutations: int = 1000, seed: int = 0,
             method: Literal["auto", "exact", "rff"] = "auto", exact_max: int = EXACT_MAX,
             rff_dim: int = RFF_DIM, bandwidth: float | None = None,
             cancel: "threading.Event | None" = None) -> MMDResult:
    """Permutation test of ``x`` (``[n, d]``, reference) against ``y`` (``[m, d]``, current).

    ``method="auto"`` takes the exact kernel up to ``exact_max`` pooled points, random Fourier
    features above. ``bandwidth`` overrides the median heuristic. Deterministic in ``seed``.
    """
    import torch

    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be [n, d] and [m, d] (got {tuple(x.shape)} and {tuple(y.shape)})")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("MMD² needs at least 2 points in each sample")
    if permutations < 1:
        raise ValueError("permutations must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    pooled = torch.cat([x.float(), y.to(x.device).float()])
    total = n + m
    sigma = float(bandwidth) if bandwidth else median_bandwidth(pooled, gen)
    exact = method == "exact" or (method == "auto" and total <= exact_max)
    stats = _ExactKernel(pooled, sigma) if exact else _FourierKernel(pooled, sigma, rff_dim, gen)
    del pooled

    observed_mask = torch.zeros(1, total, device=x.device)
    observed_mask[0, :n] = 1.0
    observed = float(_mmd2u(stats(observed_mask), n, m)[0])
    chunk = max(1, min(permutations, _CHUNK_ELEMENTS // total))
    exceed = 0
    for start in range(0, permutations, chunk):
        if cancel is not None and cancel.is_set():
            raise Cancelled("the permutation test was stopped")
        c = min(chunk, permutations - start)
        idx = torch.stack([torch.randperm(total, generator=gen)[:n] for _ in range(c)]).to(x.device)
        mask = torch.zeros(c, total, device=x.device).scatter_(1, idx, 1.0)
        exceed += int((_mmd2u(stats(mask), n, m) >= observed - _TIE_TOL).sum())
    return MMDResult(statistic=observed, p_value=(1 + exceed) / (1 + permutations), bandwidth=sigma,
                     method="exact" if exact else "rff", permutations=permutations,
                     features=None if exact else rff_dim)


def mmd_permutation_test(x: "torch.Tensor", y: "torch.Tensor", permutations: int = 1000,
                         seed: int = 0) -> tuple[float, float]:
    """``(unbiased MMD², permutation p-value)`` of ``x`` vs ``y``; see :func:`mmd_test`."""
    r = mmd_test(x, y, permutations=permutations, seed=seed)
    return r.statistic, r.p_value


def _sqdist(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    d = a @ b.T
    d.mul_(-2).add_((a * a).sum(1)[:, None]).add_((b * b).sum(1)[None, :])
    return d.clamp_(min=0)


def _mmd2u(parts: tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"], n: int, m: int) -> "torch.Tensor":
    """MMD²_u per row from ``Sxx = u'Ku``, ``u'r`` (r = K·1) and ``T = 1'K1`` (K with zero diagonal)."""
    sxx, ur, total = parts
    sxy = ur - sxx
    syy = total - 2 * ur + sxx
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


class _ExactKernel:
    """The double-centred RBF kernel of the pooled sample, zero diagonal (centring leaves MMD²_u alone)."""

    def __init__(self, pooled: "torch.Tensor", sigma: float):
        k = _sqdist(pooled, pooled)
        k.mul_(-1.0 / (2 * sigma * sigma)).exp_()
        mean = k.mean(1)
        k.sub_(mean[:, None]).sub_(mean[None, :]).add_(mean.mean())
        k.fill_diagonal_(0.0)
        self.k = k
        self.r = k.sum(1)
        self.total = self.r.sum()

    def __call__(self, mask: "torch.Tensor"):
        ku = mask @ self.k  # K is symmetric: row i of (mask @ K) = K @ mask[i]
        return (ku * mask).sum(1), mask @ self.r, self.total


class _FourierKernel:
    """``k(x, y) ~ z(x)·z(y)`` with ``z(x) = sqrt(2/D) cos(W'x + b)``, ``W ~ N(0, I/σ²)``, ``b ~ U[0, 2π)``."""

    def __init__(self, pooled: "torch.Tensor", sigma: float, dim: int, gen: "torch.Generator"):
        import torch

        d = pooled.shape[1]
        w = (torch.randn(d, dim, generator=gen) / sigma).to(pooled.device)
        b = (torch.rand(dim, generator=gen) * (2 * math.pi)).to(pooled.device)
        z = torch.cos(pooled @ w + b).mul_(math.sqrt(2.0 / dim))
        z.sub_(z.mean(0, keepdim=True))  # centring: leaves MMD²_u alone, keeps float32 sums small
        self.z = z
        self.s = (z * z).sum(1)  # the diagonal k(x_i, x_i), excluded from MMD²_u
        zsum = z.sum(0)
        self.r = z @ zsum - self.s
        self.total = zsum @ zsum - self.s.sum()

    def __call__(self, mask: "torch.Tensor"):
        a = mask @ self.z
        return (a * a).sum(1) - mask @ self.s, mask @ self.r, self.total


# -- the explanation -------------------------------------------------------------------------


def kmeans(x: "torch.Tensor", k: int, seed: int = 0, iters: int = 50, n_init: int = 3
           ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Lloyd's k-means with k-means++ seeding; the best of ``n_init`` runs. Returns ``(labels, centroids)``."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    k = max(1, min(k, n))
    sq = (x * x).sum(1)
    best: tuple[float, Any, Any] | None = None
    for _ in range(n_init):
        centers = x[int(torch.randint(n, (1,), generator=gen))][None, :]
        d2 = (sq - 2 * x @ centers[0] + centers[0] @ centers[0]).clamp_min(0)
        for _ in range(1, k):
            weights = d2.cpu().double()
            pick = int(torch.multinomial(weights, 1, generator=gen)) if weights.sum() > 0 else \
                int(torch.randint(n, (1,), generator=gen))
            centers = torch.cat([centers, x[pick][None, :]])
            d2 = torch.minimum(d2, (sq - 2 * x @ x[pick] + x[pick] @ x[pick]).clamp_min(0))
        labels = None
        for _ in range(iters):
            dist = (sq[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]).clamp_min(0)
            new = dist.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            empty = counts == 0
            centers = sums / counts.clamp_min(1)[:, None]
            if bool(empty.any()):  # re-seed an empty cluster at the point farthest from its centre
                far = dist.gather(1, labels[:, None])[:, 0].argsort(descending=True)
                for j, e in enumerate(empty.nonzero()[:, 0].tolist()):
                    centers[e] = x[far[j]]
        dist = (sq[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]).clamp_min(0)
        labels = dist.argmin(1)
        inertia = float(dist.gather(1, labels[:, None]).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centers)
    assert best is not None
    return best[1], best[2]


_STOP = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can cannot could did do does doing done down during each either else etc even ever
every few for from further get gets given gives had has have having he her here hers herself him himself
his how however i if in into is it its itself just least less like likely made make makes many may me
might more most much must my myself need needs neither no nor not now of off often on once one only or
other others otherwise our ours ourselves out over own per rather same see set should since so some such
than that the their theirs them themselves then there therefore these they this those though through thus
to too under until up upon us use used uses using very via was we well were what whatever when where
whether which while who whom whose why will with within without would yes yet you your yours yourself
yourselves let want know got thing things something anything way ways please
""".split())
"""General English function words; nothing domain-specific (c-TF-IDF discounts words common to all clusters)."""
_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return [w for w in (t.lower() for t in _WORD.findall(text)) if w not in _STOP]


def _ctfidf_labels(texts: Sequence[str], labels: Sequence[int], k: int, words: int = 3) -> list[str]:
    """Top words per cluster by a class-based TF-IDF, the cluster's texts against all texts.

    ``score(t, c) = tf(t, c) · log(tf(t, c) / tf(t, all))``: ``tf`` is the term's share of the
    words of the cluster (of all clusters), so a word as common everywhere as in the cluster
    ("return", "value" in any technical text) scores ~0 and one concentrated in the cluster
    scores high. Words seen once in a cluster are used only when there are not enough others.
    """
    per = [Counter() for _ in range(k)]
    for text, c in zip(texts, labels):
        per[c].update(_tokens(text))
    overall = Counter()
    for c in per:
        overall.update(c)
    total = sum(overall.values()) or 1
    out = []
    for c in per:
        size = sum(c.values()) or 1
        scored = []
        for w, cnt in c.items():
            tf = cnt / size
            lift = math.log(tf / (overall[w] / total))
            if lift > 0:
                scored.append((tf * lift, cnt, w))
        scored.sort(key=lambda t: (-(t[1] > 1), -t[0], t[2]))
        out.append(", ".join(w for _, _, w in scored[:words]))
    return out


def _two_proportion_two_sided(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2))


def witness(reference: "torch.Tensor", current: "torch.Tensor", points: "torch.Tensor", bandwidth: float,
            seed: int = 0, exact_max: int = EXACT_MAX, rff_dim: int = RFF_DIM) -> "torch.Tensor":
    """The MMD witness ``mean_j k(p, current_j) - mean_i k(p, reference_i)`` at each of ``points``.

    Positive where the current window is denser than the reference (what is new), negative where
    it thinned out. Exact in row chunks up to ``exact_max`` pooled points, random Fourier features
    (seeded) above, so the cost stays linear in the window sizes.
    """
    import torch

    gamma = 1.0 / (2 * bandwidth * bandwidth)
    if reference.shape[0] + current.shape[0] <= exact_max:
        out = []
        step = max(1, _CHUNK_ELEMENTS // max(1, reference.shape[0] + current.shape[0]))
        for start in range(0, points.shape[0], step):
            p = points[start:start + step]
            out.append(_sqdist(p, current).mul_(-gamma).exp_().mean(1)
                       - _sqdist(p, reference).mul_(-gamma).exp_().mean(1))
        return torch.cat(out)
    gen = torch.Generator().manual_seed(int(seed))
    w = (torch.randn(points.shape[1], rff_dim, generator=gen) / bandwidth).to(points.device)
    b = (torch.rand(rff_dim, generator=gen) * (2 * math.pi)).to(points.device)
    feats = lambda v: torch.cos(v @ w + b).mul_(math.sqrt(2.0 / rff_dim))  # noqa: E731
    diff = feats(current).mean(0) - feats(reference).mean(0)
    return feats(points) @ diff


def explain_shift(reference: "torch.Tensor", current: "torch.Tensor", reference_texts: Sequence[str],
                  current_texts: Sequence[str], clusters: int = 8, examples: int = 3, seed: int = 0,
                  bandwidth: float | None = None, max_chars: int = 300) -> list[dict[str, Any]]:
    """Clusters of the pooled embeddings with their share in each window, largest change first.

    Per cluster: ``label`` (top c-TF-IDF words), ``reference_share``, ``current_share``,
    ``change`` (current - reference), a two-sided two-proportion ``z`` and ``p_value``, and
    ``examples`` (cut at ``max_chars``): for a cluster that grew, its current-window texts where
    the MMD witness is highest, i.e. where the current window is densest relative to the
    reference (a cluster often mixes old and new texts, and the texts nearest its centroid are
    then old ones); for a cluster that shrank, its reference texts where the witness is lowest.
    ``bandwidth`` defaults to the median heuristic, as in :func:`mmd_test`.
    """
    import torch

    n, m = reference.shape[0], current.shape[0]
    current = current.to(reference.device).float()
    reference = reference.float()
    pooled = torch.cat([reference, current])
    texts = list(reference_texts) + list(current_texts)
    if bandwidth is None:
        bandwidth = median_bandwidth(pooled, torch.Generator().manual_seed(int(seed)))
    labels, centers = kmeans(pooled, clusters, seed=seed)
    k = centers.shape[0]
    lab = labels.cpu().tolist()
    score = witness(reference, current, pooled, bandwidth, seed=seed).cpu().tolist()
    names = _ctfidf_labels(texts, lab, k)
    ref_counts = Counter(lab[:n])
    cur_counts = Counter(lab[n:])
    out = []
    for c in range(k):
        rc, cc = ref_counts.get(c, 0), cur_counts.get(c, 0)
        z, p = _two_proportion_two_sided(cc, m, rc, n)
        change = cc / m - rc / n
        if change >= 0:
            members = sorted((-score[i], i) for i in range(n, n + m) if lab[i] == c)
        else:
            members = sorted((score[i], i) for i in range(n) if lab[i] == c)
        seen: list[str] = []
        for _, i in members:
            t = texts[i] if len(texts[i]) <= max_chars else texts[i][:max_chars - 1] + "…"
            if t not in seen:
                seen.append(t)
            if len(seen) >= examples:
                break
        out.append({"cluster": c, "label": names[c], "reference_count": rc, "current_count": cc,
                    "reference_share": rc / n, "current_share": cc / m, "change": change,
                    "z": z, "p_value": p, "examples": seen})
    out.sort(key=lambda d: (-abs(d["change"]), d["cluster"]))
    return out


# -- the check -------------------------------------------------------------------------------


class SemanticDriftCheck:
    """MMD on sentence embeddings of a deterministic sample of each window's prompts / completions.

    One :class:`Result` per field in ``checks.semantic.fields``: ``fail`` when the permutation
    p-value is below ``checks.semantic.alpha``, ``insufficient_data`` when either window has fewer
    than ``checks.min_samples`` non-empty texts. The embedding model loads on the first run.
    """

    name = "semantic_drift"

    def __init__(self, settings: ChecksSettings | None = None, embedder: "Embedder | None" = None):
        self.settings = settings
        """The ``checks`` settings; ``ctx.settings`` wins when set."""
        self._embedder = embedder

    def embedder(self, store: Any, semantic: SemanticSettings) -> "Embedder":
        from monitor.checks.embeddings import Embedder

        e = self._embedder
        if e is None or e.store is not store or e.settings != semantic:
            e = self._embedder = Embedder(semantic, store)
        return e

    def warm_up(self) -> None:
        """Import torch and sentence-transformers and load the model (cached per process)."""
        sem = getattr(self.settings, "semantic", None)
        if sem is not None and sem.enabled:
            from monitor.checks.embeddings import Embedder
            Embedder(sem).model  # noqa: B018 - the property loads it

    def run(self, ctx: CheckContext) -> list[Result]:
        checks = ctx.settings if ctx.settings is not None else self.settings
        sem = checks.semantic
        if not sem.enabled:
            return []
        embedder = self.embedder(ctx.store, sem)
        return [self._run_field(ctx, checks, embedder, f) for f in sem.fields]

    def _run_field(self, ctx: CheckContext, checks: ChecksSettings, embedder: "Embedder", field: str) -> Result:
        sem = checks.semantic
        if field not in _FIELDS:
            raise ValueError(f"semantic drift field must be one of {_FIELDS}, not {field!r}")
        t0 = time.monotonic()
        ref_total, cur_total = self._count(ctx, "reference", field), self._count(ctx, "current", field)
        result = Result(check=self.name, metric=field, status="ok", method="mmd", threshold=sem.alpha,
                        current_n=min(cur_total, sem.sample), reference_n=min(ref_total, sem.sample))
        details: dict[str, Any] = {"reference_n": result.reference_n, "current_n": result.current_n,
                                   "reference_total": ref_total, "current_total": cur_total}
        need = max(2, checks.min_samples)
        if ref_total < need or cur_total < need:
            result.status = "insufficient_data"
            details["reason"] = f"fewer than {need} non-empty {field} texts in a window (checks.min_samples)"
            result.details = details
            return result
        ref_texts = self._sample(ctx, "reference", field, sem.sample, ref_total)
        cur_texts = self._sample(ctx, "current", field, sem.sample, cur_total)
        result.reference_n = details["reference_n"] = len(ref_texts)
        result.current_n = details["current_n"] = len(cur_texts)
        seed = _seed(ctx, field)
        t_embed = time.monotonic()
        ref = embedder.embed(ref_texts, cancel=ctx.cancel)
        cur = embedder.embed(cur_texts, cancel=ctx.cancel)
        embed_s = time.monotonic() - t_embed
        t_test = time.monotonic()
        test = mmd_test(ref, cur, permutations=sem.permutations, seed=seed, cancel=ctx.cancel)
        test_s = time.monotonic() - t_test
        clusters = explain_shift(ref, cur, ref_texts, cur_texts, clusters=sem.clusters,
                                 examples=sem.examples, seed=seed, bandwidth=test.bandwidth)
        result.value = test.statistic
        result.p_value = test.p_value
        result.status = "fail" if test.p_value < sem.alpha else "ok"
        details.update({
            "statistic": "mmd2_unbiased", "kernel": "rbf", "bandwidth": test.bandwidth,
            "bandwidth_rule": "median pairwise distance (pooled)", "computation": test.method,
            "rff_features": test.features, "permutations": test.permutations, "seed": seed,
            "clusters": clusters,
            "distribution": [{"bucket": c["label"] or f"cluster {c['cluster']}", "reference": c["reference_share"],
                              "current": c["current_share"]} for c in clusters],
            "embedding_model": embedder.model_id, "device": str(embedder.device),
            "embed_seconds": embed_s, "test_seconds": test_s, "seconds": time.monotonic() - t0,
            "embedding_cache_hits": embedder.stats.cache_hits, "embeddings_per_s": embedder.stats.embeddings_per_s,
        })
        result.details = details
        return result

    @staticmethod
    def _count(ctx: CheckContext, which: str, field: str) -> int:
        where, params = ctx.where(which)
        return int(ctx.store.query_rows(f"SELECT count() FROM {ctx.table} WHERE {where} AND {field} != ''",
                                        params)[0][0])

    @staticmethod
    def _sample(ctx: CheckContext, which: str, field: str, size: int, total: int) -> list[str]:
        """Up to ``size`` of the ``total`` non-empty texts of one window, the same ones every time.

        The rows are chosen by a hash of the span id: ``sample_filter`` keeps a fraction that
        oversamples ``size`` by ~4 binomial standard deviations (so the LIMIT, not luck, sets the
        size), and ordering by the same hash keeps the smallest: nested, reproducible samples.
        Texts are cut at 10,000 characters in ClickHouse (the model reads far less).
        """
        where, params = ctx.where(which)
        fraction = min(1.0, (size + 4 * math.sqrt(size) + 10) / max(1, total))
        rows = ctx.store.query_rows(
            f"SELECT substringUTF8({field}, 1, {_MAX_CHARS}) FROM {ctx.table} "
            f"WHERE {where} AND {field} != '' AND {ctx.sample_filter(fraction)} "
            f"ORDER BY cityHash64(span_id) % 4294967296, span_id LIMIT {int(size)}", params)
        return [r[0] for r in rows]


def _seed(ctx: CheckContext, field: str) -> int:
    key = f"{ctx.scope.model}|{ctx.scope.label()}|{field}|{ctx.current.iso()}|{ctx.reference.iso()}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1
