"""One process of ``monitor up`` / ``monitor sidecar``: ``python -m monitor.runtime.child ROLE [INDEX]``.

Started by :class:`~monitor.runtime.supervisor.Supervisor` only: reads the
pickled settings on stdin, runs its role until SIGTERM (SIGINT is the
supervisor's to handle), reports readiness on the pipe ``MONITOR_READY_FD``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from monitor.runtime.cpu import join_idle_cgroup, lower_priority

log = logging.getLogger("monitor")


def _die_with_parent() -> None:
    """SIGTERM when the supervisor dies (even by SIGKILL), so no child outlives it (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's stop() is the only way
        pass


def stop_on_sigterm() -> list[int]:
    """SIGTERM appends to the returned list, and that is all the handler does: a handler that sets a
    threading.Event can run while this thread holds that Event's lock (in wait()'s wake-up, or in a
    first handler's set()) and then waits for itself forever (a store child hung that way after two
    SIGTERMs, its other threads still running)."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    return stopping


def wait_for(stopping: list[int], poll_s: float = 0.2) -> None:
    """Until a signal was recorded in ``stopping``."""
    while not stopping:
        time.sleep(poll_s)


def _open_store_when_free(settings, wait_s: float = 20.0):
    """The store, waiting a little while the chdb directory is still held: a store process of an
    instance that was just stopped or killed may still be exiting (one process per directory)."""
    import time

    from monitor.errors import ConfigError
    from monitor.runtime.apps import open_store

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_store(settings)
        except ConfigError as exc:
            if "held by another process" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _node(role: str, index: int, settings):
    from monitor.selfmetrics import SelfMetrics

    metrics = SelfMetrics("up")
    if role == "store":
        from monitor.runtime.storenode import StoreNode
        return StoreNode(settings, metrics, _open_store_when_free(settings)), metrics
    if role in ("pipeline", "sidecar"):  # to the store process's spool / to Kafka
        from monitor.runtime.pipeline import Pipeline
        return Pipeline(settings, metrics, embedded=role == "pipeline"), metrics
    if role == "proxy":
        from monitor.runtime.proxynode import ProxyNode
        return ProxyNode(settings, metrics, index), metrics
    raise SystemExit(f"unknown role {role!r}")


def _warm_up_then_settle(warm: Callable[[], None]) -> None:
    from monitor.runtime.heap import settle_heap

    try:
        warm()
    finally:
        settle_heap()


def main(argv: list[str]) -> int:
    role = argv[0]
    index = int(argv[1]) if len(argv) > 1 else 0
    name = role if role != "proxy" or index == 0 else f"{role}-{index}"
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stopping = stop_on_sigterm()
    settings = pickle.loads(sys.stdin.buffer.read())
    nice = {"pipeline": settings.processes.pipeline_nice, "sidecar": settings.processes.pipeline_nice,
            "store": settings.processes.store_nice}.get(role, 0)
    if nice:
        lower_priority(nice, idle=settings.processes.sched_idle)
    idle_group: Path | OSError | None = None
    if ("pipeline" if role == "sidecar" else role) in settings.processes.idle_cgroup:
        try:
            idle_group = join_idle_cgroup(os.getppid())
        except OSError as exc:
            idle_group = exc
    logging.basicConfig(level=settings.log_level, stream=sys.stderr, force=True, datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)-7s [{name}] %(name)s: %(message)s")
    for noisy in ("kafka", "clickhouse_connect", "grpc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    if isinstance(idle_group, OSError):
        log.info("not in an idle cgroup (%s): niceness and SCHED_IDLE apply; under CPU contention the "
                 "data plane may wait up to a time slice for this process", idle_group)
    elif idle_group is not None:
        log.info("runs in the idle cgroup %s: any other task preempts it at once", idle_group)
    from monitor.errors import ConfigError, MonitorError

    try:
        node, metrics = _node(role, index, settings)
        metrics_port = metrics.serve("127.0.0.1", 0)
        node.start()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("%s (is another instance running? choose other ports with the flags)", exc)
        return 1
    except MonitorError as exc:
        log.error("%s", exc)
        return 1
    ready = {"role": role, "index": index, "pid": os.getpid(), "metrics_port": metrics_port,
             **getattr(node, "ports", lambda: {})()}
    fd = int(os.environ.get("MONITOR_READY_FD", "-1"))
    if fd >= 0:
        os.write(fd, (json.dumps(ready) + "\n").encode())
        os.close(fd)
    warm = getattr(node, "warm_up", None)
    if warm is not None:  # after ready: nothing here shares the data plane's interpreter
        threading.Thread(target=_warm_up_then_settle, args=(warm,), name="monitor-warm-up", daemon=True).start()
    else:
        from monitor.runtime.heap import settle_heap

        settle_heap()
    wait_for(stopping)
    t0 = time.monotonic()
    try:
        node.stop()
    finally:
        metrics.close()
    log.debug("stopped in %.1fs", time.monotonic() - t0)
    return 0


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, once everything is stopped and written.

    The teardown is a full garbage collection over every object the process holds, then module by
    module: 2-3 s in the store process (torch, the embedding model, Streamlit), most of what Ctrl-C
    on ``monitor up`` waited for. What it would do matters nothing here by now: the node's stop has
    closed the spool, flushed Kafka and written every accepted batch (and each of those survives a
    kill -9 anyway)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
