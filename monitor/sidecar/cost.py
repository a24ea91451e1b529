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

__all__ = ["cost_processor", "GPU_COUNT", "GPU_PRICE"]

GPU_COUNT = "monitor.gpu.count"
GPU_PRICE = "monitor.gpu.price_per_hour"


def cost_processor(gpus: Callable[[], int], price_per_gpu_hour: float) -> Callable[[Signal, Message], None]:
    """An Ingress processor adding the GPU count (and price, when set) to GenAI spans without them."""

    def process(signal: Signal, msg: Message) -> None:
        if signal != "traces":
            return
        count = gpus()
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    keys = {kv.key for kv in span.attributes}
                    if GPU_COUNT in keys or not any(k.startswith("gen_ai.") for k in keys):
                        continue
                    a = span.attributes.add()
                    a.key, a.value.int_value = GPU_COUNT, count
                    if price_per_gpu_hour > 0:
                        b = span.attributes.add()
                        b.key, b.value.double_value = GPU_PRICE, price_per_gpu_hour
    return process
