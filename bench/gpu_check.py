"""GPU check: the NVML sampler on a real NVIDIA GPU kept busy by a torch matmul loop.

``python bench/gpu_check.py [seconds=5]`` prints the last and max value of every emitted series.
Exit 0: utilisation and memory reported for every GPU (utilisation > 0 under load); 1: not; 2: no GPU.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from monitor.config import GpuSettings
from monitor.otlp.values import to_python
from monitor.sidecar.emitter import MemoryEmitter
from monitor.sidecar.gpu import NvmlSampler

loaded = threading.Event()  # set once the matmul loop has run on the GPU


def busy(stop: threading.Event) -> None:
    try:
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA device")
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        while not stop.is_set():
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize()
            loaded.set()
    except Exception as exc:  # noqa: BLE001 - the check still reports what NVML sees
        print(f"gpu_check: no load on the GPU ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    try:
        import pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception as exc:  # ImportError, NVMLError, OSError
        print(f"gpu_check: no NVIDIA GPU usable through NVML ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    if count == 0:
        print("gpu_check: NVML sees no GPU", file=sys.stderr)
        return 2

    stop = threading.Event()
    loop = threading.Thread(target=busy, args=(stop,), daemon=True)
    loop.start()
    deadline = time.monotonic() + 60  # CUDA start-up: sample under load
    while loop.is_alive() and not loaded.wait(0.1) and time.monotonic() < deadline:
        pass
    emitter = MemoryEmitter()
    sampler = NvmlSampler(GpuSettings(interval_s=0.5), emitter, {"service.name": "gpu-check"})
    if not sampler.start():
        print("gpu_check: the sampler did not start (see the log above)", file=sys.stderr)
        return 2
    print(f"sampling {sampler.device_count()} GPU(s) for {seconds:g}s, load: {loaded.is_set()}", flush=True)
    time.sleep(seconds)
    sampler.stop()
    stop.set()
    loop.join(10)

    series: dict[tuple, list[float]] = {}
    units: dict[str, str] = {}
    for _, msg in emitter.emitted:
        for m in msg.resource_metrics[0].scope_metrics[0].metrics:
            units[m.name] = m.unit
            for dp in getattr(m, m.WhichOneof("data")).data_points:
                a = {kv.key: to_python(kv.value) for kv in dp.attributes}
                series.setdefault((m.name, a["hw.gpu.index"], a.get("process.pid", "")), []).append(dp.as_double)
    print(f"{len(emitter.emitted)} samples; this process is pid {os.getpid()}")
    for (name, gpu, pid), v in sorted(series.items(), key=lambda kv: tuple(map(str, kv[0]))):
        print(f"  gpu{gpu} {name:<30} {pid and f'pid {pid}':<10} last {v[-1]:>14.6g} max {max(v):>14.6g} {units[name]}")

    problems = [f"{name} not reported for gpu{gpu}" for gpu in range(count)
                for name in ("hw.gpu.utilization", "hw.gpu.memory.usage", "hw.gpu.memory.limit")
                if (name, gpu, "") not in series]
    if loaded.is_set() and max(series.get(("hw.gpu.utilization", 0, ""), [0.0])) <= 0.0:
        problems.append("hw.gpu.utilization stayed 0 on gpu0 while the matmul loop ran")
    print("\n".join(f"FAIL: {p}" for p in problems) or "OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
