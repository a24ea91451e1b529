"""The demo's model: a small byte-level transformer language model in torch.

Tokens are bytes (vocab 256; byte 0 is the end-of-text token, also prepended as the start of the
context). Weights are deterministic for a ``seed``: on first use the model is trained briefly on
English prose from the docstrings of a fixed list of standard-library modules (plus question /
answer pairs in the server's chat template, so chat replies read like documentation), then cached
as ``<cache dir>/demo-model-<hash>.pt`` (``$MONITOR_CACHE_DIR``, default ``~/.cache/llm-monitor``).
The hash covers the configuration, the seed and the Python version (whose docstrings are the
training text), so each trains its own copy; a file lock lets one process train while others
wait for its result. Later loads take well under a second.

Generation uses a KV cache (the context window is ``block_size`` bytes; when it is full the
last half is re-fed as a fresh prefill). Output is restricted to printable ASCII, newline and
tab, so one token is one character. Temperature 0 is greedy and deterministic; above 0 samples
(with top-p) from a ``torch.Generator`` the caller seeds. ``slowdown`` repeats forward passes to
multiply the compute (a simulated latency regression). Every generate loop runs inside
:func:`monitor.instrument.generation`, one ``forward()`` per pass and one ``token()`` per token.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from opentelemetry import trace
from torch import nn

from monitor.errors import Cancelled
from monitor.instrument import Generation, generation

__all__ = ["ModelConfig", "DemoModel", "GenerateResult", "chat_prompt", "build_corpus", "default_cache_dir"]

log = logging.getLogger("monitor.demo")

EOS = 0
_FORMAT_VERSION = 1

CORPUS_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd",
    "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.cookies",
    "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging",
    "logging.handlers", "lzma", "mailbox", "mimetypes", "netrc", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "quopri", "random", "re", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "stat",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "zipfile", "zoneinfo",
)
"""Standard-library modules whose docstrings are the training text (fixed order)."""

_QUESTIONS = ("What does {} do?", "Explain {}.", "Tell me about {}.", "How do I use {}?",
              "What is {} for?")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and training budget (about 30-60 s on 2 CPU cores; the defaults are the cached ones)."""

    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 4
    block_size: int = 128  # context window in bytes; also the training sequence length
    train_steps: int = 800
    batch_size: int = 8
    lr: float = 3e-3
    corpus_bytes: int = 60_000


def default_cache_dir() -> Path:
    """The trained model's cache: :func:`monitor.config.cache_dir`."""
    from monitor.config import cache_dir
    return cache_dir()


def chat_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """The chat template: ``### Role:\\n<content>\\n`` per message, then ``### Assistant:\\n``."""
    parts = []
    for m in messages:
        role = str(m.get("role") or "user")
        parts.append(f"### {role[:1].upper()}{role[1:]}:\n{message_text(m.get('content'))}\n")
    parts.append("### Assistant:\n")
    return "".join(parts)


def message_text(content: Any) -> str:
    """A message's text: a string, or OpenAI content parts (their ``text``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


CHAT_STOP = "\n### "
"""Implicit stop string of chat requests: the model starting the next turn."""


# -- training text -----------------------------------------------------------------------

def _paragraphs(doc: str | None) -> list[str]:
    out = []
    for para in (doc or "").split("\n\n"):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        if not lines or lines[0].startswith((">>>", "...", "-", "*", "+", ":", "|", "=")):
            continue
        text = " ".join(ln for ln in lines if ln)
        if not (40 <= len(text) <= 700) or not text.isascii():
            continue
        prose = sum(c.isalpha() or c in " ,.;'" for c in text)
        if prose < 0.85 * len(text) or "    " in text:
            continue
        out.append(text)
    return out


def build_corpus(max_bytes: int = ModelConfig.corpus_bytes) -> bytes:
    """The training text: documents separated by the end-of-text byte, in a fixed order."""
    with warnings.catch_warnings():  # deprecated members (typing.io, ...) warn when read
        warnings.simplefilter("ignore")
        return _build_corpus(max_bytes)


def _build_corpus(max_bytes: int) -> bytes:
    docs: list[str] = []
    for modname in CORPUS_MODULES:
        try:
            mod = importlib.import_module(modname)
        except Exception:  # pragma: no cover - a platform without the module
            continue
        docs.extend(_paragraphs(inspect.getdoc(mod)))
        members: list[tuple[str, Any]] = []
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj) or
                                            inspect.isbuiltin(obj)):
                continue
            if getattr(obj, "__module__", None) not in (modname, "_" + modname.rsplit(".", 1)[-1]):
                continue
            members.append((f"{modname}.{name}", obj))
            if inspect.isclass(obj):
                for mname, meth in sorted(vars(obj).items()):
                    if not mname.startswith("_") and callable(meth):
                        members.append((f"{modname}.{name}.{mname}", meth))
        for i, (qualname, obj) in enumerate(members):
            try:
                paras = _paragraphs(inspect.getdoc(obj))
            except Exception:  # pragma: no cover
                continue
            if not paras:
                continue
            question = _QUESTIONS[i % len(_QUESTIONS)].format(qualname)
            docs.append(f"### User:\n{question}\n### Assistant:\n{paras[0]}")
            docs.extend(paras[1:])
    unique = list(dict.fromkeys(docs))
    random.Random(20240601).shuffle(unique)  # fixed: a spread of modules whatever max_bytes is
    out = bytearray()
    for d in unique:
        out += b"\x00" + d.encode("ascii")
        if len(out) >= max_bytes:
            break
    return bytes(out[:max_bytes]) + b"\x00"


# -- the network ---------------------------------------------------------------------------

KV = tuple[torch.Tensor, torch.Tensor]


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, past: KV | None) -> tuple[torch.Tensor, KV]:
        b, t, c = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        # With a cache only one new position is fed at a time, which may attend to everything.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None and t > 1)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        x = x + self.mlp(self.ln2(x))
        return x, (k, v)


class TinyLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(256, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)
        self.head.weight = self.wte.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def hidden(self, idx: torch.Tensor, past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        start = past[0][0].shape[2] if past else 0
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        new: list[KV] = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past[i] if past else None)
            new.append(kv)
        return self.ln_f(x), new

    def forward(self, idx: torch.Tensor, past: list[KV] | None = None) -> tuple[torch.Tensor, list[KV]]:
        h, new = self.hidden(idx, past)
        return self.head(h), new


def _train(cfg: ModelConfig, seed: int, corpus: bytes, cancel: threading.Event | None = None
           ) -> tuple[TinyLM, float]:
    data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyLM(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, cfg.train_steps // 20)
    net.train()
    loss_val = float("nan")
    ema: float | None = None
    for step in range(cfg.train_steps):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"training of the demo model stopped at step {step} of {cfg.train_steps}")
        cosine = 0.5 * (1 + math.cos(math.pi * step / cfg.train_steps))
        lr = cfg.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * cosine)
        for g in opt.param_groups:
            g["lr"] = lr
        ix = torch.randint(0, len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([data[i:i + cfg.block_size] for i in ix.tolist()])
        y = torch.stack([data[i + 1:i + 1 + cfg.block_size] for i in ix.tolist()])
        logits, _ = net(x)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        loss_val = loss.item()
        ema = loss_val if ema is None else 0.95 * ema + 0.05 * loss_val
    net.eval()
    return net, float(ema if ema is not None else loss_val)


# -- the model as the server uses it ------------------------------------------------------------

@dataclass
class GenerateResult:
    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int  # bytes of ``text`` (stop strings and end-of-text not counted)
    generation: Generation
    context_len: int = 0


@dataclass
class DemoModel:
    net: TinyLM
    cfg: ModelConfig
    seed: int
    path: Path | None = None
    trained: bool = False
    train_seconds: float = 0.0
    load_seconds: float = 0.0
    loss: float = float("nan")
    _allowed: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mask = torch.full((256,), float("-inf"))
        allowed = [EOS, 9, 10, *range(32, 127)]
        mask[allowed] = 0.0
        self._allowed = mask
        self.net.eval()
        self.net.requires_grad_(False)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def context_window(self) -> int:
        return self.cfg.block_size

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, seed: int = 0, cfg: ModelConfig | None = None, cache_dir: Path | str | None = None,
             cache: bool = True, cancel: threading.Event | None = None) -> DemoModel:
        """The model for ``seed``: from the cache, or trained (then cached) on first use; ``cancel``
        stops the training within a step (:class:`~monitor.errors.Cancelled`, nothing cached)."""
        cfg = cfg or ModelConfig()
        t0 = time.perf_counter()
        # The training text is the docstrings of this Python version (not read again on loads).
        key = hashlib.sha256(json.dumps({"v": _FORMAT_VERSION, "cfg": asdict(cfg), "seed": seed,
                                         "python": list(sys.version_info[:2])},
                                        sort_keys=True).encode()).hexdigest()[:16]
        directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = directory / f"demo-model-{key}.pt"
        if cache:
            directory.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.with_suffix(".lock") if cache else None):
            if cache and path.exists():
                try:
                    saved = torch.load(path, map_location="cpu", weights_only=True)
                    net = TinyLM(cfg)
                    net.load_state_dict(saved["state_dict"])
                    return cls(net, cfg, seed, path=path, train_seconds=float(saved.get("train_seconds", 0.0)),
                               load_seconds=time.perf_counter() - t0, loss=float(saved.get("loss", "nan")))
                except Exception as exc:  # a corrupt or foreign file: train again
                    log.warning("demo model cache %s unreadable (%s); training again", path, exc)
            corpus = build_corpus(cfg.corpus_bytes)
            log.info("training the demo model (%d steps on %d bytes of docstrings; first use only)",
                     cfg.train_steps, len(corpus))
            t1 = time.perf_counter()
            net, loss = _train(cfg, seed, corpus, cancel)
            train_seconds = time.perf_counter() - t1
            if cache:
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save({"state_dict": net.state_dict(), "config": asdict(cfg), "seed": seed,
                            "train_seconds": train_seconds, "loss": loss, "corpus_bytes": len(corpus)}, tmp)
                os.replace(tmp, path)
        return cls(net, cfg, seed, path=path if cache else None, trained=True, train_seconds=train_seconds,
                   load_seconds=time.perf_counter() - t0, loss=loss)

    # -- inference ----------------------------------------------------------------------------

    @staticmethod
    def encode(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _fwd(self, ids: list[int], past: list[KV] | None, slowdown: Callable[[], float],
             debt: list[float]) -> tuple[torch.Tensor, list[KV]]:
        x = torch.tensor([ids], dtype=torch.long)
        logits, new = self.net(x, past)
        # slowdown: repeat the same pass (its result discarded) to multiply the compute.
        debt[0] += max(1.0, float(slowdown())) - 1.0
        while debt[0] >= 1.0:
            self.net(x, past)
            debt[0] -= 1.0
        return logits[0, -1], new

    def _sample(self, logits: torch.Tensor, temperature: float, top_p: float,
                rng: torch.Generator | None, counts: torch.Tensor | None = None,
                presence_penalty: float = 0.0, frequency_penalty: float = 0.0) -> int:
        logits = logits.float() + self._allowed
        if counts is not None:  # OpenAI's penalties over the tokens generated so far
            logits = logits - frequency_penalty * counts - presence_penalty * (counts > 0).float()
        if temperature <= 0.0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
            keep[0] = True
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=rng))

    @torch.inference_mode()
    def generate(self, prompt: str, *, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 rng: torch.Generator | None = None, stop: Sequence[str] = (),
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 slowdown: Callable[[], float] = lambda: 1.0,
                 on_token: Callable[[str, int], bool | None] | None = None,
                 tracer: trace.Tracer | None = None, operation: str = "text_completion",
                 model_name: str = "monitor-demo-tiny") -> GenerateResult:
        """Generate up to ``max_tokens`` bytes after ``prompt``.

        ``on_token(piece, context_len)`` is called after each token with the text that became
        final (possibly "" while a partial stop string is held back) and the context length;
        returning False aborts (finish reason ``abort``). Held-back text that turned out not to
        be a stop string is released at the end by one more call with ``context_len`` -1.
        ``tracer`` receives the :mod:`monitor.instrument` span (``trace.NoOpTracer()`` for none).
        """
        prompt_ids = self.encode(prompt)
        block = self.cfg.block_size
        context = ([EOS] + prompt_ids)[-block:]
        stops = [s for s in stop if s]
        text = ""
        emitted = 0
        finish = "length"
        debt = [0.0]
        counts = torch.zeros(256) if presence_penalty or frequency_penalty else None
        with generation(model_name, tracer=tracer, operation=operation, input_tokens=len(prompt_ids),
                        device="cpu") as gen:
            with gen.forward():
                logits, cache = self._fwd(context, None, slowdown, debt)
            cache_len = len(context)
            for i in range(max_tokens):
                tok = self._sample(logits, temperature, top_p, rng, counts, presence_penalty, frequency_penalty)
                if tok == EOS:
                    finish = "stop"
                    break
                if counts is not None:
                    counts[tok] += 1
                gen.token()
                text += chr(tok)
                context.append(tok)
                cut = _find_stop(text, stops)
                if cut is not None:
                    text = text[:cut]
                    finish = "stop"
                    break
                hold = _held_back(text, stops)
                piece = text[emitted:len(text) - hold]
                emitted += len(piece)
                if on_token is not None and on_token(piece, cache_len + 1) is False:
                    finish = "abort"
                    break
                if i == max_tokens - 1:
                    break
                with gen.forward():
                    if cache_len >= block:  # window full: re-feed the last half as a fresh prefill
                        context = context[-(block // 2):]
                        logits, cache = self._fwd(context, None, slowdown, debt)
                        cache_len = len(context)
                    else:
                        logits, cache = self._fwd([tok], cache, slowdown, debt)
                        cache_len += 1
            if emitted < len(text) and on_token is not None and finish != "abort":
                on_token(text[emitted:], -1)  # context_len -1: a release of held-back text, not a token
            gen.finish(finish)
        completion = len(text.encode("utf-8"))
        gen.output_tokens = completion
        return GenerateResult(text, finish, len(prompt_ids), completion, gen, cache_len)

    @torch.inference_mode()
    def embed(self, ids: list[int]) -> list[float]:
        """Mean of the final hidden states over the input's bytes (last ``block_size`` - 1)."""
        context = [EOS] + ids[-(self.cfg.block_size - 1):]
        h, _ = self.net.hidden(torch.tensor([context], dtype=torch.long))
        vec = h[0, 1:].mean(dim=0) if len(context) > 1 else h[0, 0]
        return vec.tolist()


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Where a stop string that ``text`` just completed starts (checked after every token)."""
    for s in stops:
        if text.endswith(s):
            return len(text) - len(s)
    return None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that could start a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if s.startswith(text[-n:]):
                hold = n
                break
    return hold


@contextlib.contextmanager
def _file_lock(path: Path | None):
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def seeded_rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
