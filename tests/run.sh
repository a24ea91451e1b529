#!/usr/bin/env bash
# The one test command (README "Tests"): installs the project and its test dependencies into a
# virtualenv cached outside the checkout, resolves the real Kafka broker's jars from Maven Central
# (cached in ~/.m2 and ~/.cache/llm-monitor), then runs the whole suite. The tests start the broker
# themselves (a session fixture per worker, plus private brokers for the fault tests).
#
#   tests/run.sh                 # everything: the newcomer's path (tests/newcomer.py), then the suite
#   tests/run.sh -k kafka -x     # extra arguments go to pytest (and skip the newcomer's path)
#
# MONITOR_CACHE_DIR (default ~/.cache/llm-monitor) holds the venv and the broker jars;
# PYTEST_WORKERS (default 2) sets pytest-xdist's worker count.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${MONITOR_CACHE_DIR:-$HOME/.cache/llm-monitor}"
VENV="${MONITOR_VENV:-$CACHE/venv}"
mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
echo "installing llm-monitor[test] into $VENV" >&2
"$VENV/bin/python" -m pip install -q -e '.[test]'
if ! command -v chromium >/dev/null 2>&1; then  # the dashboard browser test drives Debian's chromium
  echo "installing chromium (apt)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 &&
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || echo "could not install chromium; the browser test will fail" >&2
fi
echo "resolving the Kafka broker jars (Maven Central, cached)" >&2
python3 deploy/kafka/broker.py resolve >&2
export HF_HUB_OFFLINE=1
if [ "$#" -eq 0 ]; then
  # The suite's venv has every extra and the test tools, which would hide a missing runtime
  # dependency: first install the README's own lines into fresh virtualenvs and run them.
  echo "the newcomer's path: the README's install lines in fresh virtualenvs (tests/newcomer.py)" >&2
  python3 tests/newcomer.py
fi
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" -W ignore::DeprecationWarning "$@"
