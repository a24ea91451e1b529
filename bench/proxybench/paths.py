"""What stands behind each path, started for one run (each its own process, in the registry of
bench/procs.py, so killed on exit):

- ``direct``: the fake upstream (``bench/proxy.py _upstream``);
- ``monitor`` / ``monitor-python`` / ``monitor-native``: one ``python -m monitor up`` each (own data
  directory, free loopback ports, ``proxy.implementation`` from :data:`MONITORS`) in front of it;
- ``nginx``: nginx with its own config (:data:`NGINX_CONF`: ``proxy_buffering off``, HTTP/1.1 keep-alive
  pool to the upstream) on a loopback port, ``-g 'daemon off;'``, never as a service;
- ``aiohttp``: the plain pass-through (``bench/proxy.py _passthrough``).

And what a monitor's /metrics says about its proxy: the pids of its proxy process(es), and the
``monitor_proxy_requests_total`` counter of the chat route.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from procs import Proc, log, nginx_temp_paths, wait_until
from procstat import free_port, http_get, parse_metrics

from proxybench.conversation import CHAT

ROOT = Path(__file__).resolve().parents[2]
PROXY_PY = ROOT / "bench" / "proxy.py"
"""The entry point the child processes run (``_upstream``, ``_passthrough``, ``_loadgen``)."""
PATHS = ("direct", "monitor", "nginx")
EXTRA_PATHS = ("aiohttp", "monitor-python", "monitor-native")  # opt-in with --paths
MONITORS = {"monitor": None, "monitor-python": "python", "monitor-native": "native"}
"""The `monitor up` paths and the proxy.implementation each runs (None: the config's, ``auto``);
``--variant NAME=CONFIG`` adds ``native@NAME`` (see :func:`add_variant`)."""
VARIANT_CONFIGS: dict[str, Path] = {}
"""``native@NAME`` -> its ``--config`` file (instead of ``--monitor-config``)."""


def add_variant(spec: str) -> str:
    """``NAME=CONFIG``: one more native monitor path, ``native@NAME``, with its own config file, so two
    settings are compared in one interleaved run (on a machine whose speed drifts, separate runs are
    not comparable). Returns the path's name."""
    name, sep, conf = spec.partition("=")
    if not sep or not name.strip() or not Path(conf).is_file():
        raise ValueError(f"--variant {spec!r}: expected NAME=CONFIG with an existing YAML file")
    path = f"native@{name.strip()}"
    MONITORS[path] = "native"
    VARIANT_CONFIGS[path] = Path(conf).resolve()
    return path
POLL_S = 0.1
"""How often a start-up wait polls."""

NGINX_CONF = """\
{user}worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp_paths}    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream model {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_upstream(port: int, chunks: int, interval_ms: float, prefill_ms: float, log_path: Path) -> Proc:
    """The fake upstream on ``port`` (:mod:`proxybench.servers`); not waited for."""
    return Proc("upstream", [sys.executable, str(PROXY_PY), "_upstream", "--port", str(port), "--chunks",
                             str(chunks), "--interval-ms", str(interval_ms), "--prefill-ms", str(prefill_ms)],
                log_path, cwd=ROOT)


def start_paths(args: argparse.Namespace, paths: list[str], workdir: Path, nginx_bin: str | None,
                procs: dict[str, Proc], result: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Starts the processes behind ``paths`` (into ``procs``) and waits until each answers.
    Returns (path -> base URL, monitor path -> its /metrics URL); notes ports and nginx's config in ``result``."""
    py = sys.executable
    logs = workdir / "logs"
    # -- upstream
    up_port = free_port()
    procs["upstream"] = start_upstream(up_port, args.chunks, args.interval_ms, args.prefill_ms, logs / "upstream.log")
    urls = {"direct": f"http://127.0.0.1:{up_port}"}
    wait_until("the upstream", lambda: http_get(urls["direct"] + "/health")[0] == 200,
               [procs["upstream"]], args.start_timeout, POLL_S)

    # -- monitor (one `monitor up` per monitor path)
    metrics_urls: dict[str, str] = {}
    result["monitor_ports"] = {}
    for mp in [p for p in paths if p in MONITORS]:
        ports = {k: free_port() for k in ("proxy", "grpc", "http", "metrics", "admin")}
        data_dir = workdir / f"{mp}-data"
        env = {k: v for k, v in os.environ.items() if k != "MONITOR_CONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        env["MONITOR_CHECKS__ADMIN_PORT"] = str(ports["admin"])  # two of them side by side
        if MONITORS[mp]:
            env["MONITOR_PROXY__IMPLEMENTATION"] = MONITORS[mp]
        conf = VARIANT_CONFIGS.get(mp) or (args.monitor_config.resolve() if args.monitor_config else None)
        conf_args = ["--config", str(conf)] if conf else []
        procs[mp] = Proc(mp, [py, "-m", "monitor", *conf_args, "up", "--upstream", urls["direct"],
                              "--proxy-port", str(ports["proxy"]), "--data-dir", str(data_dir),
                              "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
                              "--metrics-port", str(ports["metrics"]), "--no-dashboard"],
                         logs / f"{mp}.log", env=env, cwd=ROOT)
        urls[mp] = f"http://127.0.0.1:{ports['proxy']}"
        metrics_urls[mp] = murl = f"http://127.0.0.1:{ports['metrics']}/metrics"
        t = time.monotonic()
        wait_until(f"{mp}'s proxy and /metrics",
                   lambda u=urls[mp], m=murl: http_get(u + "/health")[0] == 200 and http_get(m)[0] == 200,
                   [procs[mp]], args.start_timeout, POLL_S)
        log(f"{mp} up in {time.monotonic() - t:.1f}s (proxy {urls[mp]}, metrics {murl})")
        result["monitor_ports"][mp] = ports

    # -- nginx
    if "nginx" in paths:
        nd = workdir / "nginx"
        nd.mkdir(exist_ok=True)
        ng_port = free_port()
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(user=user, workers=args.nginx_workers, d=nd, upstream_port=up_port, port=ng_port,
                                 temp_paths=nginx_temp_paths(nd))
        (nd / "nginx.conf").write_text(conf)
        procs["nginx"] = Proc("nginx", [nginx_bin or "nginx", "-p", str(nd), "-c", str(nd / "nginx.conf"),
                                        "-e", str(nd / "error.log"), "-g", "daemon off;"], logs / "nginx.log", cwd=ROOT)
        urls["nginx"] = f"http://127.0.0.1:{ng_port}"
        wait_until("nginx", lambda: http_get(urls["nginx"] + "/health")[0] == 200, [procs["nginx"]],
                   args.start_timeout, POLL_S)
        result["nginx_conf"] = conf

    # -- plain aiohttp pass-through (opt-in)
    if "aiohttp" in paths:
        pt_port = free_port()
        procs["aiohttp"] = Proc("aiohttp", [py, str(PROXY_PY), "_passthrough", "--port", str(pt_port), "--upstream",
                                            urls["direct"]], logs / "aiohttp.log", cwd=ROOT)
        urls["aiohttp"] = f"http://127.0.0.1:{pt_port}"
        wait_until("the aiohttp pass-through", lambda: http_get(urls["aiohttp"] + "/health")[0] == 200,
                   [procs["aiohttp"]], args.start_timeout, POLL_S)
    return urls, metrics_urls


def monitor_proxy_pids(metrics_url: str) -> list[int]:
    """The pids of `monitor up`'s proxy process(es), from its /metrics (monitor_process_pid); the
    native binary is a child of its proxy process and counted with it."""
    st, text = http_get(metrics_url)
    if st != 200:
        return []
    return [int(v) for k, v in parse_metrics(text).items()
            if k.startswith("monitor_process_pid{") and 'process="proxy' in k and v > 0]


def proxy_counter(metrics: dict[str, float], route: str = CHAT) -> tuple[int, dict[str, int]]:
    """Sum of ``monitor_proxy_requests_total`` for ``route`` and its split by status."""
    by_status: dict[str, int] = {}
    for key, val in metrics.items():
        if key.startswith("monitor_proxy_requests_total{") and f'route="{route}"' in key:
            m = re.search(r'status="([^"]*)"', key)
            status = m.group(1) if m else "?"
            by_status[status] = by_status.get(status, 0) + int(val)  # one series per proxy worker process
    return sum(by_status.values()), by_status
