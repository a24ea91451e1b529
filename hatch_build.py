"""Hatch build hook: the native capture proxy (``native/proxy``, Rust) built into the package.

For wheel and editable builds, when ``cargo`` is on PATH: ``cargo build --release --locked -j 2``
in ``native/proxy``, then the binary is copied to ``monitor/_native/monitor-proxy`` (gitignored)
and force-included in a wheel (which is then tagged for this platform); ``CARGO_TARGET_DIR`` is
honoured (a shared one makes rebuilds incremental). Without cargo, when the
build fails, or with ``LLM_MONITOR_NO_NATIVE=1``, one line says so and the build goes on without
it: the proxy then runs its Python request path (``proxy.implementation: auto``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

CRATE = Path("native") / "proxy"
BINARY = "monitor-proxy"
TARGET = Path("monitor") / "_native" / BINARY
"""Where the package finds it (``monitor.sidecar.proxy.native.BINARY_PATH``)."""
SKIP_ENV = "LLM_MONITOR_NO_NATIVE"


def _say(line: str) -> None:
    print(f"llm-monitor: {line}", file=sys.stderr, flush=True)


class NativeProxyBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return  # the sdist ships the crate's sources; a wheel built from it builds the binary
        binary = self._build()
        if binary is not None and version != "editable":
            build_data["force_include"][str(binary)] = str(TARGET)
            build_data["pure_python"] = False  # a platform binary inside: tag the wheel for this platform
            build_data["infer_tag"] = True

    def _build(self) -> Path | None:
        root = Path(self.root)
        crate = root / CRATE
        if os.environ.get(SKIP_ENV, "") not in ("", "0"):
            _say(f"{SKIP_ENV} is set: the native proxy is not built; the capture proxy runs its Python path")
            return None
        if not (crate / "Cargo.toml").is_file():
            return None  # not in this source tree (a wheel built from a trimmed sdist)
        cargo = shutil.which("cargo")
        if cargo is None:
            _say("cargo is not on PATH: the native proxy (monitor-proxy) is not built; the capture proxy "
                 "runs its Python path (install Rust and reinstall to get it)")
            return None
        started = time.monotonic()
        try:
            done = subprocess.run([cargo, "build", "--release", "--locked", "-j", "2"], cwd=crate,
                                  capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _say(f"building the native proxy failed ({exc}); the capture proxy runs its Python path")
            return None
        # cargo honours CARGO_TARGET_DIR (relative to the crate, where it runs): look where it built
        built = crate / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / BINARY
        if done.returncode != 0 or not built.is_file():
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error")] or done.stderr.splitlines()[-1:]
            _say(f"building the native proxy failed (cargo exit {done.returncode}: "
                 f"{errors[0] if errors else 'no output'}); the capture proxy runs its Python path")
            return None
        target = root / TARGET
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copy2(built, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a proxy running the old binary keeps it
        _say(f"native proxy built in {time.monotonic() - started:.0f}s: {TARGET}")
        return target
