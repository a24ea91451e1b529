"""Process and machine accounting from /proc, shared by the benchmarks (Linux only)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["CLK_TCK", "free_port", "descendants", "cpu_jiffies", "pid_alive", "machine_busy", "http_get"]

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


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in open(f"/proc/{pid}/status"):
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
