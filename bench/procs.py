"""Processes a benchmark starts, shared by the benches: each child runs in its own session and process
group, is remembered in one registry and is killed (its group and every descendant seen) on exit,
Ctrl-C and errors included. A failure to start or to measure is a :class:`BenchError` whose message
says why (with the tail of the child's log)."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

from procstat import descendants, pid_alive

__all__ = ["BenchError", "Proc", "log", "nginx_temp_paths", "wait_until"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def nginx_temp_paths(d: Path) -> str:
    """The ``http`` block's lines that keep the temporary files of an nginx a bench starts in its work
    folder ``d`` (nginx's defaults are under /var/lib/nginx, which another run may hold)."""
    return "".join(f"    {k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


class BenchError(RuntimeError):
    """Something could not be started or measured; the message says why."""


class Proc:
    """A child in its own session / process group; stderr (and stdout, unless ``stdout_path`` or ``pipe``)
    appended to ``log_path``. With ``pipe`` its stdin and stdout are pipes for :meth:`ask`."""

    registry: ClassVar[list[Proc]] = []

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdout_path: Path | None = None, pipe: bool = False):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"start {name}: {shlex.join(cmd)}  (log {log_path})")
        with ExitStack() as files:  # the child keeps its own descriptors
            err = files.enter_context(open(log_path, "ab"))
            out = files.enter_context(open(stdout_path, "ab")) if stdout_path else err
            self.popen = subprocess.Popen(
                cmd, stdout=subprocess.PIPE if pipe else out, stderr=err,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        self.known: set[int] = set()
        self._rbuf = b""
        Proc.registry.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_children(self) -> None:
        """Note its descendants now, so that :meth:`kill` finds those that left its process group."""
        if self.alive():
            self.known.update(descendants(self.pid))

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in lines[-n:])

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}; last lines of {self.log_path}:\n"
                             + self.log_tail())

    def ask(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One JSON line to its stdin, one JSON line back from its stdout (``pipe=True``)."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write((json.dumps(obj) + "\n").encode())
        self.popen.stdin.flush()
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._rbuf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} did not answer within {timeout:.0f}s")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                data = os.read(fd, 1 << 20)
                if not data:
                    self.popen.wait(5)
                    self.check()
                    raise BenchError(f"{self.name} closed its stdout")
                self._rbuf += data
            else:
                self.check()
        line, self._rbuf = self._rbuf.split(b"\n", 1)
        return json.loads(line)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> dict[str, Any]:
        """Graceful stop: ``sig`` to the process, wait; then kill its group and stray descendants."""
        self.remember_children()
        t0 = time.monotonic()
        graceful = True
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                graceful = False
                log(f"{self.name} did not exit {timeout:.0f}s after {signal.Signals(sig).name}; killing it")
        self.kill()
        return {"graceful": graceful, "exit_code": self.popen.returncode,
                "stop_seconds": round(time.monotonic() - t0, 2)}

    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds, to its process group and every descendant seen."""
        self.remember_children()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [p for p in self.known if pid_alive(p)]
            if self.alive():
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for p in live:
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (self.alive() or any(pid_alive(p) for p in live)):
                time.sleep(0.05)
            if not self.alive() and not any(pid_alive(p) for p in live):
                break
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.popen.stdin, self.popen.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def kill_all(cls) -> None:
        for p in list(reversed(cls.registry)):
            try:
                p.kill()
            except Exception as exc:  # noqa: BLE001 -- keep killing the others
                log(f"could not kill {p.name} ({p.pid}): {exc}")


def wait_until(what: str, pred: Callable[[], Any], procs: list[Proc], timeout: float, interval: float = 0.2) -> Any:
    """Polls ``pred`` every ``interval`` s until it returns something true (returned), checking that ``procs``
    still run; a :class:`BenchError` after ``timeout`` s, with their log tails logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        v = pred()
        if v:
            return v
        time.sleep(interval)
    for p in procs:
        log(f"{p.name} log tail:\n{p.log_tail()}")
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
