"""GPU telemetry from NVML as OTLP metrics, named after the OpenTelemetry hardware conventions.

Every ``interval_s`` one ``ExportMetricsServiceRequest`` (scope ``monitor.gpu``)
carries, per device:

==============================  ======  ======================================================
metric                          unit    source (NVML)
==============================  ======  ======================================================
``hw.gpu.utilization``          1       utilisation ``.gpu`` / 100, attribute ``hw.gpu.task=general``
``hw.gpu.memory.utilization``   1       utilisation ``.memory`` / 100 (memory controller busy)
``hw.gpu.memory.usage``         By      memory info ``.used``
``hw.gpu.memory.limit``         By      memory info ``.total``
``hw.power``                    W       power usage (mW) / 1000
``hw.temperature``              Cel     temperature, GPU sensor
``hw.gpu.clock.sm``             MHz     SM clock (not in the conventions: our name)
``hw.energy``                   J       total energy (mJ) / 1000, monotonic cumulative sum
``hw.gpu.process.memory.usage`` By      per compute process, attribute ``process.pid`` (not in the
                                        conventions: our name)
==============================  ======  ======================================================

All but ``hw.energy`` are gauges (the conventions model memory usage/limit as
UpDownCounters; a sampled gauge carries the same value and is simpler to query).
Device attributes: ``hw.id`` (the GPU UUID), ``hw.name``, ``hw.type=gpu``, ``hw.gpu.index``.

A field the board does not support (power on some boards, energy before
Volta, process memory under some virtualisation) is skipped and logged once;
the rest of the sample goes out. Without NVML (no GPU, no driver, no
``nvidia-ml-py``) the sampler logs one info line and does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from monitor.otlp.metrics_builder import MetricsBuilder

__all__ = ["NvmlSampler", "SCOPE_NAME"]

log = logging.getLogger("monitor.sidecar.gpu")

SCOPE_NAME = "monitor.gpu"


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


class NvmlSampler:
    """Samples every GPU NVML sees every ``settings.interval_s`` and emits OTLP metrics."""

    def __init__(self, settings, emitter, resource: dict[str, str], nvml: Any = None):
        self.settings = settings
        self.emitter = emitter
        self.resource = dict(resource)
        self._nvml = nvml
        self._initialised = False
        self._devices: list[tuple[Any, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self.samples = 0
        """Samples emitted so far."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> bool:
        """Initialise NVML and start sampling; False (one info line logged) when GPU metrics are off."""
        if self._thread is not None and self._thread.is_alive():
            return True
        if not self.settings.enabled:
            log.info("GPU metrics off (gpu.enabled is false)")
            return False
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except (ImportError, OSError) as exc:
                log.info("GPU metrics off: the NVML bindings (nvidia-ml-py) are not installed (%s)", exc)
                return False
            self._nvml = nvml
        error = getattr(nvml, "NVMLError", OSError)
        try:
            nvml.nvmlInit()
        except (error, OSError) as exc:
            log.info("GPU metrics off: NVML is not available, no NVIDIA GPU or driver (%s)", exc)
            return False
        self._initialised = True
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except error as exc:
            log.info("GPU metrics off: NVML cannot count devices (%s)", exc)
            self._shutdown()
            return False
        self._devices = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except error as exc:
                log.warning("GPU %d skipped: no NVML handle (%s)", index, exc)
                continue
            name = self._field("name", index, nvml.nvmlDeviceGetName, handle)
            uuid = self._field("uuid", index, nvml.nvmlDeviceGetUUID, handle)
            attrs: dict[str, Any] = {
                "hw.id": _text(uuid) if uuid is not None else f"gpu-{index}",
                "hw.name": _text(name) if name is not None else "NVIDIA GPU",
                "hw.type": "gpu",
                "hw.gpu.index": index,
            }
            self._devices.append((handle, attrs))
        wanted = [str(d).strip() for d in getattr(self.settings, "devices", None) or [] if str(d).strip()]
        if wanted:
            seen = {str(a["hw.gpu.index"]) for _, a in self._devices} | {a["hw.id"] for _, a in self._devices}
            missing = [w for w in wanted if w not in seen]
            if missing:
                log.warning("gpu.devices %s not found; NVML sees %s", missing,
                            ", ".join(f"{a['hw.gpu.index']} ({a['hw.id']})" for _, a in self._devices) or "none")
            self._devices = [(h, a) for h, a in self._devices
                             if str(a["hw.gpu.index"]) in wanted or a["hw.id"] in wanted]
        if not self._devices:
            log.info("GPU metrics off: NVML sees no GPU%s", " of gpu.devices" if wanted else "")
            self._shutdown()
            return False
        log.info("GPU metrics on: %d device(s) (%s), every %gs", len(self._devices),
                 ", ".join(a["hw.name"] for _, a in self._devices), self.settings.interval_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="monitor-gpu", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 1.0) -> None:
        """Prompt and idempotent; safe without :meth:`start`."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():  # an NVML call is stuck: do not pull the library from under it
                log.warning("GPU sampler did not stop within %gs", timeout)
                self._thread = None
                return
        self._thread = None
        self._shutdown()

    def device_count(self) -> int:
        """GPUs being sampled (0 when NVML is off); used for the per-request GPU cost."""
        return len(self._devices) if self._initialised else 0

    def _shutdown(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        self._devices = []
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.debug("nvmlShutdown failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # never let a bug end the loop
                log.exception("GPU sample failed unexpectedly")
            self._stop.wait(self.settings.interval_s)

    # ------------------------------------------------------------------ sampling

    def _field(self, field: str, index: int, fn: Callable, *args: Any) -> Any:
        """``fn(*args)``, or None when NVML says this field is unavailable (logged once per field)."""
        try:
            return fn(*args)
        except getattr(self._nvml, "NVMLError", OSError) as exc:
            if field not in self._warned:
                self._warned.add(field)
                log.info("GPU %d: %s not available from NVML (%s); not reported", index, field, exc)
            return None

    def sample_once(self, now_ns: int | None = None) -> bool:
        """Sample every device and emit one request; False when nothing could be read."""
        if not self._initialised:
            return False
        nvml = self._nvml
        now_ns = time.time_ns() if now_ns is None else now_ns
        out = MetricsBuilder(self.resource, SCOPE_NAME)
        server_pid = self.settings.server_pid
        for handle, dev in self._devices:
            i = dev["hw.gpu.index"]
            util = self._field("utilization", i, nvml.nvmlDeviceGetUtilizationRates, handle)
            if util is not None:
                out.gauge("hw.gpu.utilization", util.gpu / 100.0, {**dev, "hw.gpu.task": "general"}, now_ns,
                          unit="1", description="Fraction of time the GPU was busy")
                out.gauge("hw.gpu.memory.utilization", util.memory / 100.0, dev, now_ns, unit="1",
                          description="Fraction of time GPU memory was read or written")
            mem = self._field("memory", i, nvml.nvmlDeviceGetMemoryInfo, handle)
            if mem is not None:
                out.gauge("hw.gpu.memory.usage", mem.used, dev, now_ns, unit="By",
                          description="GPU memory in use")
                out.gauge("hw.gpu.memory.limit", mem.total, dev, now_ns, unit="By",
                          description="GPU memory size")
            power = self._field("power", i, nvml.nvmlDeviceGetPowerUsage, handle)
            if power is not None:
                out.gauge("hw.power", power / 1000.0, dev, now_ns, unit="W", description="Power draw")
            temp = self._field("temperature", i, nvml.nvmlDeviceGetTemperature, handle,
                               nvml.NVML_TEMPERATURE_GPU)
            if temp is not None:
                out.gauge("hw.temperature", temp, dev, now_ns, unit="Cel", description="GPU temperature")
            clock = self._field("sm_clock", i, nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
            if clock is not None:
                out.gauge("hw.gpu.clock.sm", clock, dev, now_ns, unit="MHz",
                          description="SM clock (not an OpenTelemetry convention)")
            energy = self._field("energy", i, nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            if energy is not None:
                out.counter("hw.energy", energy / 1000.0, dev, now_ns, 0, unit="J",
                            description="Energy consumed since the driver was loaded")
            procs = self._field("processes", i, nvml.nvmlDeviceGetComputeRunningProcesses, handle)
            for p in procs or ():
                used = getattr(p, "usedGpuMemory", None)
                if used is None or (server_pid is not None and p.pid != server_pid):
                    continue
                out.gauge("hw.gpu.process.memory.usage", used, {**dev, "process.pid": int(p.pid)}, now_ns,
                          unit="By", description="GPU memory used by one process")
        if len(out) == 0:
            return False
        self.samples += 1
        self.emitter.emit("metrics", out.request)
        return True
