#!/usr/bin/env python3
"""A newcomer's first ten minutes, as CI runs them: fresh virtualenvs, the README's own lines.

tests/run.sh runs this before the suite (the suite's virtualenv has every
extra and the test tools, which would hide a missing runtime dependency).
Standard library only. Steps, each with a time limit; any failure exits 1:

1. copy the checkout (tracked and untracked-but-not-ignored files: what a
   clean clone plus local edits holds) into a temporary directory;
2. run the README's quick-start install line there (a fresh ``.venv``; pip's
   cache may serve the wheels);
3. ``monitor up`` (the README's next line), the README's curl example, and
   ``monitor status`` showing the stored row; Ctrl-C answered within 5 s;
4. ``monitor demo --once`` with short phases until the demo reports that its
   checks caught every injected change and the control phase stayed clean;
   Ctrl-C answered within 5 s;
5. the README's sidecar install line (core only) in a second fresh
   virtualenv: ``monitor sidecar`` accepts the curl example into its spool,
   ``monitor up`` there says which extra to install (exit 2);
6. prints what a newcomer pays: install time, virtualenv size, idle RSS.

Ports are free loopback ports passed through ``MONITOR_*`` variables (the
curl example's port is replaced accordingly), so a busy 4318 on the machine
cannot fail the run.

    python3 tests/newcomer.py [--keep] [--phase-seconds 12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MONITOR_CACHE_DIR") or Path.home() / ".cache" / "llm-monitor")


def say(msg: str) -> None:
    print(f"[newcomer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_blocks() -> list[tuple[str, list[str]]]:
    """(heading, lines) of every fenced bash block in the README, in order."""
    heading, out, block = "", [], None
    for line in (ROOT / "README.md").read_text().splitlines():
        if block is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip() == "```":
            out.append((heading, block))
            block = None
        elif block is not None:
            block.append(line)
    return out


def readme_line(heading: str, contains: str) -> str:
    for h, lines in readme_blocks():
        if h == heading:
            for line in lines:
                if contains in line:
                    return line.split("  #")[0].strip()
    raise Failed(f"README: no line with {contains!r} in a bash block under '{heading}'")


def readme_block(contains: str) -> str:
    for _, lines in readme_blocks():
        text = "\n".join(lines)
        if contains in text:
            return text
    raise Failed(f"README: no bash block containing {contains!r}")


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted in the work tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def run(cmd: str, cwd: Path, timeout: float, env: dict | None = None) -> tuple[float, str]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"`{cmd}` took more than {timeout:.0f}s") from None
    if proc.returncode != 0:
        raise Failed(f"`{cmd}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return time.monotonic() - t0, proc.stdout + proc.stderr


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


def packages_size(venv: Path) -> int:
    """What the install added: site-packages without pip and setuptools (the venv's own tooling)."""
    sp = site_packages(venv)
    tooling = ("pip", "setuptools", "pkg_resources", "_distutils_hack")
    return sum(du(p) if p.is_dir() else p.stat().st_size for p in sp.iterdir()
               if not p.name.startswith(tooling) and not p.is_symlink())


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out.append(int(c))
        out.extend(descendants(int(c)))
    return out


class Service:
    """A long-running command with its output in a file; stopped with SIGINT like Ctrl-C."""

    def __init__(self, name: str, cmd: str, cwd: Path, env: dict, log: Path):
        self.name, self.log = name, log
        self._f = open(log, "w")
        self.proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=cwd, env=env, stdout=self._f,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern, re.M)
        return self.wait_for_value(lambda: rx.search(self.text()), f"/{pattern}/", timeout, interval=0.25)

    def wait_for_value(self, pred, what: str, timeout: float, interval: float = 0.5):
        """``pred()`` once it is true; Failed if the command exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            if self.proc.poll() is not None:
                raise Failed(f"{self.name} exited {self.proc.returncode} before {what}:\n{self.text()[-4000:]}")
            time.sleep(interval)
        raise Failed(f"{self.name}: no {what} within {timeout:.0f}s:\n{self.text()[-4000:]}")

    def interrupt(self, within: float = 5.0) -> float:
        """Ctrl-C (SIGINT to the process group, as a terminal sends it); the seconds it took to exit."""
        t0 = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failed(f"{self.name} did not exit within {within:.0f}s of Ctrl-C:\n{self.text()[-3000:]}") from None
        took = time.monotonic() - t0
        if self.proc.returncode not in (0, 130, -signal.SIGINT):
            raise Failed(f"{self.name} exited {self.proc.returncode} after Ctrl-C:\n{self.text()[-3000:]}")
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._f.close()


def ports_env(base: dict) -> tuple[dict, dict]:
    ports = {k: free_port() for k in ("grpc", "http", "metrics", "admin", "dashboard", "proxy", "server")}
    env = dict(base, MONITOR_RECEIVER__GRPC_PORT=str(ports["grpc"]), MONITOR_RECEIVER__HTTP_PORT=str(ports["http"]),
               MONITOR_TELEMETRY__METRICS_PORT=str(ports["metrics"]), MONITOR_CHECKS__ADMIN_PORT=str(ports["admin"]),
               MONITOR_DASHBOARD__PORT=str(ports["dashboard"]), MONITOR_PROXY__PORT=str(ports["proxy"]))
    return env, ports


def status_json(venv: Path, cwd: Path, env: dict, port: int) -> dict:
    out = subprocess.run([str(venv / "bin" / "monitor"), "status", "--port", str(port), "--json"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise Failed(f"monitor status failed: {out.stderr}")
    return json.loads(out.stdout)


def stored_events(metrics_port: int) -> float:
    """inference_events rows written, from the process's /metrics (0 while it is not answering yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(r'^monitor_store_rows_written_total\{[^}]*table="inference_events"[^}]*\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def record_demo(dest: Path, data: Path, log: Path, **timings) -> None:
    """The demo's data directory, its log and what was measured around it, for tests/test_demo.py."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(data, dest / "data", symlinks=True)  # ClickHouse links data/<db>/<table> into store/
    shutil.copy(log, dest / "demo.log")
    (dest / "run.json").write_text(json.dumps({**timings, "readme_line": True}, indent=1))


def wait(pred, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.5)
    raise Failed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--phase-seconds", type=float, default=12.0)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--demo-record", type=Path, metavar="DIR",
                    help="keep the demo's log, data directory and timings in DIR (replaced): tests/test_demo.py "
                         "then asserts on this run instead of starting the same demo a second time "
                         "(tests/run.sh passes it on in $MONITOR_DEMO_RECORD)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llm-monitor-newcomer-"))
    services: list[Service] = []
    facts: dict[str, str] = {}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "VIRTUAL_ENV", "PYTHON"))}
    base_env["MONITOR_CACHE_DIR"] = str(CACHE)  # the demo model trained once per machine
    base_env["HF_HUB_OFFLINE"] = "1"
    # The native proxy's Rust dependencies compiled once per machine (like pip's wheel cache): the crate
    # itself is still built from this checkout, so a broken build still fails here. Set
    # MONITOR_NEWCOMER_CARGO_CACHE=0 to time a newcomer's full build.
    if os.environ.get("MONITOR_NEWCOMER_CARGO_CACHE", "1") != "0":
        base_env["CARGO_TARGET_DIR"] = str(CACHE / "cargo-target")
    try:
        checkout = work / "llm-monitor"
        copy_checkout(checkout)
        say(f"checkout copied to {checkout}")

        # -- the quick start ------------------------------------------------------------------
        install = readme_line("Quick start", "pip install")
        up_line = readme_line("Quick start", "monitor up")
        say(f"README install line: {install}")
        took, install_out = run(install, checkout, timeout=1500, env=base_env)
        venv = checkout / ".venv"
        cached = " (Rust dependencies from the cargo cache)" if "CARGO_TARGET_DIR" in base_env else ""
        facts["full install"] = f"{took:.0f} s{cached}, {packages_size(venv) / 2**20:,.0f} MiB of packages"
        say(f"installed in {took:.0f}s")

        env, ports = ports_env(base_env)
        up = Service("monitor up", up_line, checkout, env, work / "up.log")
        services.append(up)
        up.wait_for(r"ready; Ctrl-C to stop", timeout=240)
        if shutil.which("cargo", path=base_env.get("PATH")):  # the install built the native request path
            binary = checkout / "monitor" / "_native" / "monitor-proxy"
            if not os.access(binary, os.X_OK):
                hook = [ln for ln in install_out.splitlines() if "llm-monitor:" in ln]
                raise Failed(f"cargo is on PATH but the install did not build {binary}; the build hook said: "
                             f"{hook or 'nothing (pip -q hides it: run the install line without -q)'}")
            facts["native proxy"] = "built by the install"
        time.sleep(5)
        facts["monitor up idle RSS"] = f"{rss_mb(up.proc.pid):.0f} MiB"
        curl = readme_block("curl -s localhost:4318").replace("localhost:4318", f"localhost:{ports['http']}")
        curl = re.sub(r"(\.venv/bin/monitor status)", rf"\1 --port {ports['metrics']}", curl)
        _, out = run(curl, checkout, timeout=60, env=env)
        wait(lambda: status_json(venv, checkout, env, ports["metrics"])["store"]["rows_written"].get(
            "inference_events", 0) >= 1, "the README's curl example stored as an inference event", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['dashboard']}/_stcore/health", timeout=10) as r:
            assert r.read() == b"ok"
        took = up.interrupt()
        facts["monitor up: Ctrl-C to exit"] = f"{took:.1f} s"
        say(f"monitor up: curl example stored, dashboard answering, Ctrl-C took {took:.1f}s")

        # -- the demo ---------------------------------------------------------------------------
        env, ports = ports_env(base_env)
        demo_line = readme_line("See it with data in a minute", "monitor demo")
        demo_cmd = (f"{demo_line} --once --phase-seconds {args.phase_seconds:g} --rate {args.rate:g} "
                    f"--server-port {ports['server']} --data-dir demo-data")
        demo = Service("monitor demo", demo_cmd, checkout, env, work / "demo.log")
        services.append(demo)
        t0 = time.monotonic()
        demo.wait_for_value(lambda: stored_events(ports["metrics"]) > 0, "the first stored request", timeout=240)
        first_data_s = time.monotonic() - t0
        facts["monitor demo: first request stored"] = f"{first_data_s:.0f} s"
        m = demo.wait_for(r"demo: (every injected change was caught.*|MISSED.*|control phase.*FAILED.*)$",
                          timeout=240 + 8 * args.phase_seconds * 3)
        if "every injected change was caught" not in m.group(1):
            raise Failed(f"the demo did not show drift being caught: {m.group(0)}\n{demo.text()[-5000:]}")
        demo.wait_for(r"webhook receiver got .*fire", timeout=60)
        facts["monitor demo: until every change was caught"] = f"{time.monotonic() - t0:.0f} s"
        took = demo.interrupt()
        facts["monitor demo: Ctrl-C to exit"] = f"{took:.1f} s"
        say(f"monitor demo: {m.group(1)}; Ctrl-C took {took:.1f}s")
        if args.demo_record:
            record_demo(args.demo_record, checkout / "demo-data", demo.log, returncode=demo.proc.returncode,
                        stop_s=took, first_data_s=first_data_s, phase_seconds=args.phase_seconds, rate=args.rate)
            say(f"the demo's run kept in {args.demo_record} (tests/test_demo.py asserts on it)")

        # -- the sidecar alone (core install) ---------------------------------------------------
        core_install = readme_line("The sidecar alone", "pip install")
        core_install = core_install.replace(".venv", ".venv-core")
        say(f"README sidecar install line: {core_install}")
        took, _ = run(core_install, checkout, timeout=900, env=base_env)
        core = checkout / ".venv-core"
        facts["core install"] = f"{took:.0f} s, {packages_size(core) / 2**20:,.0f} MiB of packages"
        env, ports = ports_env(base_env)
        dead = free_port()  # nothing listens: the sidecar spools while Kafka is away
        side = Service("monitor sidecar", f"{core}/bin/monitor sidecar --kafka 127.0.0.1:{dead} --spool spool/s.sqlite",
                       checkout, env, work / "sidecar.log")
        services.append(side)
        side.wait_for(r"ready; Ctrl-C to stop", timeout=60)
        time.sleep(5)
        facts["monitor sidecar idle RSS"] = f"{rss_mb(side.proc.pid):.0f} MiB"
        curl_only = readme_block("curl -s localhost:4318").split(".venv/bin/monitor status")[0]
        _, out = run(curl_only.replace("localhost:4318", f"localhost:{ports['http']}"), checkout, 30, env)
        wait(lambda: status_json(core, checkout, env, ports["metrics"])["spool"]["messages"] >= 1,
             "the curl example in the sidecar's spool", 20)
        took = side.interrupt()
        facts["monitor sidecar: Ctrl-C to exit"] = f"{took:.1f} s"
        proc = subprocess.run([str(core / "bin" / "monitor"), "up"], cwd=checkout, env=env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 2 or "pip install 'llm-monitor[embedded]'" not in proc.stderr \
                or len(proc.stderr.strip().splitlines()) != 1:
            raise Failed(f"core install: `monitor up` should say which extra to install (exit 2), got "
                         f"{proc.returncode}: {proc.stderr}")
        say("core install: sidecar spooled the curl example; `monitor up` names the embedded extra")

        say("what a newcomer pays:")
        for k, v in facts.items():
            say(f"  {k:45s} {v}")
        return 0
    except Failed as exc:
        say(f"FAILED: {exc}")
        for k, v in facts.items():
            say(f"  {k:45s} {v}")
        return 1
    finally:
        for s in services:
            s.kill()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
