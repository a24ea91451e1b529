"""How the analysis processes of ``monitor up`` give the CPU to the data plane (Linux).

Three levels, each applied where the OS allows it:

- niceness of the process and of its session's autogroup: their share of a contended CPU;
- SCHED_IDLE: inside its own scheduling group, the process gives the CPU up the moment another task
  of that group wakes;
- an *idle cgroup* (``cpu.idle = 1``, Linux 5.15+, cgroup v1 or v2): the same across groups. Every
  child of ``monitor up`` runs in a session of its own, and with autogroups the scheduler compares
  sessions before tasks, so SCHED_IDLE alone does not make the proxy (or the model server, or its
  clients) preempt an analysis process at once: the woken task may wait for the running one's slice
  (EEVDF: about 1-3 ms). In a cgroup marked idle it is preempted at once by any task outside it,
  and gets what the others leave. Creating one needs write access to the process's own cpu
  cgroup (root, or a delegated subtree); without it, the first two levels remain and the log says
  so once.

The idle cgroup is ``<own cpu cgroup>/llm-monitor-<supervisor pid>-idle``; the supervisor removes it
when it stops (:func:`remove_idle_cgroup`), and stale ones of supervisors that are gone are removed
by the next (:func:`remove_stale_idle_cgroups`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_PREFIX = "llm-monitor-"
_SUFFIX = "-idle"


def lower_priority(nice: int, idle: bool = False) -> None:
    """Niceness for the process and its session's autogroup; SCHED_IDLE when ``idle``. Call before any
    thread starts, so every thread of the process inherits it."""
    try:
        os.nice(nice)
    except OSError:
        pass
    try:  # with autogroups a plain nice() would leave this session an equal share beside the model server
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # not Linux, autogroups compiled out: plain niceness is what applies
        pass
    if idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def cpu_cgroup_dir(cgroups: str | None = None, mountinfo: str | None = None) -> Path | None:
    """The cgroup directory holding the cpu controller's files for this process (or for the given
    ``/proc/<pid>/cgroup`` and ``/proc/<pid>/mountinfo`` texts), or None."""
    try:
        own = (Path("/proc/self/cgroup").read_text() if cgroups is None else cgroups).splitlines()
        mounts = (Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo).splitlines()
    except OSError:
        return None
    v1 = {}
    v2 = None
    for line in own:
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            v2 = path
        else:
            for c in controllers.split(","):
                v1[c] = path
    for m in mounts:
        pre, _, post = m.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if len(fields) < 5 or len(post_fields) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], post_fields[0], post_fields[2]
        if fstype == "cgroup" and "cpu" in options.split(",") and "cpu" in v1:
            rel = os.path.relpath(v1["cpu"], root) if v1["cpu"].startswith(root) else None
            if rel is not None:
                return Path(point) / rel
        if fstype == "cgroup2" and v2 is not None and "cpu" not in v1:
            rel = os.path.relpath(v2, root) if v2.startswith(root) else None
            if rel is not None:
                d = Path(point) / rel
                try:
                    if "cpu" in (d / "cgroup.controllers").read_text().split():
                        return d
                except OSError:
                    return None
    return None


def idle_cgroup_path(owner_pid: int) -> Path | None:
    """Where the idle cgroup of the supervisor ``owner_pid`` lives (None: no cpu cgroup here)."""
    base = cpu_cgroup_dir()
    if base is None:
        return None
    if base.name.startswith(_PREFIX) and base.name.endswith(_SUFFIX):  # already in one: its parent
        base = base.parent
    return base / f"{_PREFIX}{owner_pid}{_SUFFIX}"


def join_idle_cgroup(owner_pid: int) -> Path:
    """Move this process (all its threads) into the supervisor's idle cgroup, creating it. Raises
    OSError with what to do where that is not possible."""
    path = idle_cgroup_path(owner_pid)
    if path is None:
        raise OSError("no cpu cgroup is mounted for this process")
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create {path} ({exc.strerror}): run as root or give the monitor a "
                      f"delegated cgroup, or set processes.idle_cgroup: false") from exc
    if not (path / "cpu.idle").exists():
        raise OSError(f"{path} has no cpu.idle (Linux 5.15 or later, cgroup v2 with the cpu controller "
                      f"enabled for the subtree)")
    (path / "cpu.idle").write_text("1")
    (path / "cgroup.procs").write_text(str(os.getpid()))
    return path


def remove_idle_cgroup(owner_pid: int, wait_s: float = 3.0) -> None:
    """Remove the supervisor's idle cgroup once its processes have exited (a no-op if it has none),
    waiting up to ``wait_s`` for the last of them: a store process's ingest workers leave up to a second
    after it (they notice their parent is gone), and a cgroup with a process in it cannot be removed."""
    path = idle_cgroup_path(owner_pid)
    if path is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                return  # remove_stale_idle_cgroups() of a later start takes it
            time.sleep(0.1)


def remove_stale_idle_cgroups() -> int:
    """Remove the idle cgroups of supervisors that are gone (killed before they could); how many."""
    path = idle_cgroup_path(os.getpid())
    if path is None:
        return 0
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    for d in entries:
        name = d.name
        if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
            continue
        pid = name[len(_PREFIX):-len(_SUFFIX)]
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        try:
            d.rmdir()  # only empty ones go: a live process inside keeps it
            removed += 1
        except OSError:
            pass
    return removed
