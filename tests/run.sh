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
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then  # deploy/nginx/dashboard.conf is tried in front of the dashboards
  echo "installing nginx (apt)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -q nginx >/dev/null 2>&1 ||
    echo "could not install nginx; the test of deploy/nginx/dashboard.conf will be SKIPPED (loudly)" >&2
fi
echo "resolving the Kafka broker jars (Maven Central, cached)" >&2
python3 deploy/kafka/broker.py resolve >&2
export HF_HUB_OFFLINE=1
if [ "$#" -eq 0 ]; then
  # The suite's venv has every extra and the test tools, which would hide a missing runtime
  # dependency: first install the README's own lines into fresh virtualenvs and run them.
  echo "the newcomer's path: the README's install lines in fresh virtualenvs (tests/newcomer.py)" >&2
  # Its demo run (the README's `monitor demo --once` line) is kept for tests/test_demo.py, which asserts on
  # it instead of running the same two-minute demo again inside the suite.
  DEMO_RECORD="$CACHE/newcomer-demo"
  python3 tests/newcomer.py --demo-record "$DEMO_RECORD"
  export MONITOR_DEMO_RECORD="$DEMO_RECORD"
  # The real partners (llama.cpp's llama-server + a 98 MB model, the stock OpenTelemetry Collector) are
  # built once per machine into $CACHE/partners (~9 + ~4 min on 2 cores, then seconds); building them here
  # shows the progress in this log instead of inside a pytest worker. A missing toolchain is reported and
  # the tests that need it are skipped, loudly (tests/partners.py).
  if command -v cargo >/dev/null 2>&1; then  # the install built monitor-proxy; its own unit tests run here
    echo "the native request path's unit tests (cargo test in native/proxy)" >&2
    (cd native/proxy && CARGO_TARGET_DIR="$CACHE/cargo-test-target" cargo test --release --locked -j 2 -q) >&2
  fi
  echo "real partners: llama-server, SmolLM2, otelcol (tests/partners.py; built once, then cached)" >&2
  "$VENV/bin/python" tests/partners.py build >&2 ||
    echo "some partners could not be built (above): their tests will be SKIPPED (missing toolchain) or fail" >&2
else
  # A run of the files that need them builds just those (a no-op once cached); the tests themselves never
  # build (a 9-minute build inside a pytest worker would meet the test's timeout), they skip loudly instead.
  WANT=""
  case " $* " in *test_llamacpp*) WANT="$WANT llama-server smollm2" ;; esac
  case " $* " in *test_otelcol*) WANT="$WANT otelcol" ;; esac
  if [ -n "$WANT" ]; then
    echo "real partners:$WANT (tests/partners.py; built once, then cached)" >&2
    # shellcheck disable=SC2086
    "$VENV/bin/python" tests/partners.py build $WANT >&2 ||
      echo "some partners could not be built (above): their tests will be SKIPPED (missing toolchain) or fail" >&2
  fi
fi
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" -W ignore::DeprecationWarning "$@"
