"""Process and machine accounting from /proc, and reading a process's HTTP endpoints (health, /metrics),
shared by the benchmarks (Linux only)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["CLK_TCK", "cpu_jiffies", "cpu_jiffies_own", "descendants", "free_port", "http_get", "loadavg",
           "machine_busy", "parse_metrics", "pid_alive", "rss_kib", "thread_jiffies"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the ``(comm)`` field: state, ppid, ... (raises OSError when gone)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    tree = _children_map()
    out, todo = [], [pid]
    while todo:
        for c in tree.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_jiffies(pids: list[int]) -> int:
    """utime+stime of ``pids``, their threads and their live descendants, each process counted once."""
    total, seen = 0, set()
    for root in pids:
        for pid in [root, *descendants(root)]:
            if pid in seen:
                continue
            seen.add(pid)
            try:
                f = _stat_fields(pid)
            except OSError:
                continue
            total += int(f[11]) + int(f[12])
    return total


def cpu_jiffies_own(pid: int) -> int:
    """utime+stime of ``pid`` alone (its threads, not its children); 0 when it is gone."""
    try:
        f = _stat_fields(pid)
    except OSError:
        return 0
    return int(f[11]) + int(f[12])


def thread_jiffies(pid: int) -> dict[int, tuple[str, int]]:
    """Per thread of ``pid``: (comm, utime+stime)."""
    out: dict[int, tuple[str, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{t}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        f = raw.rsplit(")", 1)[1].split()
        out[int(t)] = (comm, int(f[11]) + int(f[12]))
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pid_alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; 0 when nothing answered (the benches poll health and /metrics with it)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def parse_metrics(text: str) -> dict[str, float]:
    """Every non-histogram ``monitor_*`` sample of a Prometheus text page: ``name{labels}`` -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("monitor_") and "_bucket{" not in line and not line.startswith("monitor_info"):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out
