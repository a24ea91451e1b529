"""What a plain ``pip install llm-monitor`` (the sidecar role) can and cannot run.

The suite's virtualenv has every extra (tests/run.sh installs ``.[test]``), so
a missing runtime dependency would not show here by itself: these tests hide
the extras' modules in a subprocess (tests/block_extras.py) and check that
every core module still imports, that modules behind an extra say which
install line to run, and that a command whose extra is missing ends with one
line and exit code 2. tests/newcomer.sh does the same with real fresh
virtualenvs in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"

BEHIND_AN_EXTRA = {
    "monitor.webui.queries": "dashboards",
    "monitor.webui.ui": "dashboards",
    "monitor.webui.charts": "dashboards",
    "monitor.demo": "demo",
}
"""Packages and modules that need an extra at import time (their submodules too)."""

_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, {tests!r})
import block_extras
import monitor
out = {{}}
for m in pkgutil.walk_packages(monitor.__path__, "monitor."):
    if m.name == "monitor.__main__":
        continue
    try:
        importlib.import_module(m.name)
        out[m.name] = "ok"
    except Exception as exc:
        out[m.name] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(out))
"""


def _behind(name: str) -> str | None:
    for prefix, extra in BEHIND_AN_EXTRA.items():
        if name == prefix or name.startswith(prefix + "."):
            return extra
    return None


def test_core_modules_import_nothing_from_an_extra():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL.format(tests=str(TESTS))], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) > 60  # every module was tried
    core_failures = {m: r for m, r in results.items() if r != "ok" and _behind(m) is None}
    assert core_failures == {}, "core modules must import without any extra"
    for name, result in results.items():
        extra = _behind(name)
        if extra is not None and result != "ok":
            # a module behind an extra says which install line to run, never a bare ModuleNotFoundError
            assert result.startswith("MissingExtra: "), (name, result)
            assert f"pip install 'llm-monitor[{extra}]'" in result, (name, result)
    for top in ("monitor.webui.queries", "monitor.demo"):
        assert results[top].startswith("MissingExtra"), results[top]


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import block_extras; "
            f"from monitor.cli import main; sys.argv = ['monitor'] + {args!r}; main()")
    env = dict(os.environ, MONITOR_CHECKS__ADMIN_PORT="1")  # no running monitor up to ask
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.mark.parametrize("args, extra", [
    (["up", "--data-dir", "data"], "embedded"),
    (["demo", "--data-dir", "data"], "demo"),
    (["demo-server"], "demo"),
    (["dashboard", "--data-dir", "data"], "dashboards"),
    (["check", "--data-dir", "data"], "checks"),
    (["checks", "--clickhouse", "http://127.0.0.1:1/monitor"], "checks"),
    (["ingest", "--kafka", "127.0.0.1:1", "--clickhouse", "chdb://data"], "embedded"),
    (["baseline", "list", "--data-dir", "data"], "embedded"),
])
def test_a_command_whose_extra_is_missing_says_the_install_line_and_exits_2(args, extra, tmp_path):
    proc = _cli(args, tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert f"pip install 'llm-monitor[{extra}]'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_core_commands_run_without_extras(tmp_path):
    for args in (["--help"], ["sidecar", "--help"], ["status", "--help"], ["ingest", "--help"]):
        proc = _cli(args, tmp_path)
        assert proc.returncode == 0, (args, proc.stderr)


def test_every_import_is_declared():
    """The shared tool lists imports no runtime install (core plus extras, not test) brings."""
    tool = ROOT.parent / "shared" / "tools" / "undeclared_imports.py"
    if not tool.exists():
        pytest.skip(f"LOUD SKIP: {tool} is not on this machine; tests/newcomer.sh checks fresh installs instead")
    proc = subprocess.run([sys.executable, str(tool)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
