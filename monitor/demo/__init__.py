"""The reference model server (``monitor demo-server``): a small byte-level transformer in torch
behind an OpenAI-compatible API that traces and exports metrics the way vLLM does.

- :mod:`monitor.demo.model`: the model (trained briefly on first use, then cached), its KV-cache
  generate loop timed with :func:`monitor.instrument.generation`.
- :mod:`monitor.demo.server`: the aiohttp app (``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``, ``/v1/models``, ``/metrics``, ``/health``, ``/admin/slowdown``), vLLM's
  ``llm_request`` span over OTLP/gRPC and vLLM's Prometheus names.

Needs the ``demo`` extra (torch, the openai SDK, the OTLP/gRPC exporter).
"""

from monitor.extras import require

require("demo", "the reference model server")
