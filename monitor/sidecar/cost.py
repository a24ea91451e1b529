"""GPU cost inputs, stamped on model-request spans in the sidecar (where the GPUs are known).

Ingest turns them into ``gpu_seconds`` (engine time x GPUs per request) and
``gpu_cost`` (GPU-seconds x price per GPU-hour / 3600) on the event. With
continuous batching several requests share a GPU at once, so per-request
GPU-seconds are an upper bound; totals per model over a window, divided by
the window, give the share of the fleet a model keeps busy.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from monitor.otlp.codec import Signal
from monitor.otlp.genai import GPU_COUNT_KEY as GPU_COUNT
from monitor.otlp.genai import GPU_PRICE_KEY as GPU_PRICE

__all__ = ["cost_processor", "GPU_COUNT", "GPU_PRICE"]


def cost_processor(gpus: Callable[[], int], price_per_gpu_hour: float) -> Callable[[Signal, Message], None]:
    """An Ingress processor adding the GPU count (and price, when set) to the resource of every span
    batch without them: the GPUs belong to the host that served the requests, and stamping the resource
    costs one look per resource, not per span. A span's own ``monitor.gpu.count`` still wins."""

    def process(signal: Signal, msg: Message) -> None:
        if signal != "traces":
            return
        count = gpus()
        for rs in msg.resource_spans:
            attrs = rs.resource.attributes
            if any(kv.key == GPU_COUNT for kv in attrs):
                continue
            a = attrs.add()
            a.key, a.value.int_value = GPU_COUNT, count
            if price_per_gpu_hour > 0:
                b = attrs.add()
                b.key, b.value.double_value = GPU_PRICE, price_per_gpu_hour
    return process
