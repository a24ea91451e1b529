"""The ``monitor`` command.

Flags override ``MONITOR_*`` environment variables, which override the YAML
file given with ``--config``; see :mod:`monitor.config`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from monitor import config as _config
from monitor.errors import ConfigError, MonitorError
from monitor.extras import MissingExtra, require

log = logging.getLogger("monitor")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("kafka", "clickhouse_connect", "grpc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # kafka-python logs every refused connection at ERROR while the broker is down; our own
    # warnings say that once with the spool's size instead.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _load(ctx: click.Context, overrides: dict[str, Any]) -> _config.Settings:
    try:
        settings = _config.load(ctx.obj.get("config"), overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if ctx.obj.get("log_level"):
        settings.log_level = ctx.obj["log_level"]  # child processes log at the same level
    _setup_logging(settings.log_level)
    return settings


class _MissingExtraExit(click.ClickException):
    """One line naming the install to run; exit code 2 (a usage problem, not a failure of the run)."""

    exit_code = 2


def _click_error(exc: MonitorError) -> click.ClickException:
    return _MissingExtraExit(str(exc)) if isinstance(exc, MissingExtra) else click.ClickException(str(exc))


class _Main(click.Group):
    """The command group; a part whose extra is missing ends any command with one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MissingExtra as exc:
            raise _MissingExtraExit(str(exc)) from None


def _needs(extra: str, what: str) -> None:
    try:
        require(extra, what)
    except MissingExtra as exc:
        raise _MissingExtraExit(str(exc)) from None


def _store_needs(settings: _config.Settings, what: str) -> None:
    """A chdb:// store is the embedded engine, which the ``embedded`` extra brings."""
    if settings.store.is_embedded:
        _needs("embedded", what)


def _run(app_factory, settings: _config.Settings) -> None:
    from monitor.runtime.apps import run_until_signal

    try:
        app = app_factory(settings)
        run_until_signal(app)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc} (is another instance running? choose other ports with the flags)") \
            from None
    except MonitorError as exc:
        raise _click_error(exc) from None
    # stop() returned: everything the app accepted is written and its threads are done. What is left
    # is the interpreter's teardown (torch's and chdb's destructors take seconds in `monitor demo`),
    # which Ctrl-C should not wait for.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_common = [
    click.option("--upstream", default=None,
                 help="Model server to put the capture proxy in front of, e.g. http://127.0.0.1:8000."),
    click.option("--proxy-port", type=int, default=None, help="Port of the capture proxy [8080]."),
    click.option("--scrape", "scrape_url", default=None,
                 help="The model server's Prometheus /metrics URL to scrape (vLLM, TGI, SGLang, llama.cpp)."),
    click.option("--host", default=None, help="Bind address of the OTLP receiver [127.0.0.1]."),
    click.option("--grpc-port", type=int, default=None, help="OTLP/gRPC port [4317]."),
    click.option("--http-port", type=int, default=None, help="OTLP/HTTP port [4318]."),
    click.option("--metrics-port", type=int, default=None, help="Port of this process's /metrics."),
    click.option("--metrics-host", default=None, help="Bind address of /metrics [127.0.0.1]."),
]


def _with(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


def _receiver(host, grpc_port, http_port) -> dict[str, Any]:
    return {"host": host, "grpc_port": grpc_port, "http_port": http_port}


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help=f"YAML config file (or ${_config.CONFIG_ENV}).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None)
@click.version_option(package_name="llm-monitor")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, log_level: str | None) -> None:
    """Observability and drift monitoring for self-hosted model servers."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_file
    ctx.obj["log_level"] = log_level.upper() if log_level else None


_admin_port = click.option("--admin-port", type=int, default=None,
                           help="Local port `monitor check` and `monitor baseline` use to reach this process [9466].")
_dashboard = [
    click.option("--dashboard-port", type=int, default=None, help="Port of the dashboards [8501]; 0 = any free one."),
    click.option("--no-dashboard", is_flag=True, default=False, help="Do not serve the dashboards in this process."),
]


def _dashboard_overrides(port: int | None, off: bool) -> dict[str, Any]:
    return {"port": port, "enabled": False if off else None}


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="chdb data directory [./monitor-data].")
@click.option("--retention-days", type=int, default=None, help="TTL of every table [30].")
@click.option("--single-process", is_flag=True, default=False,
              help="Run every part in this one process (debugging; the proxy then shares the checks' interpreter).")
@_admin_port
@_with(_dashboard)
@_with(_common)
@click.pass_context
def up(ctx, data_dir, retention_days, single_process, admin_port, dashboard_port, no_dashboard, upstream, proxy_port,
       scrape_url, host, grpc_port, http_port, metrics_port, metrics_host):
    """Embedded mode: receiver, capture proxy, ingest, ClickHouse (chdb), checks and dashboards on this host.

    The data plane (capture proxy, OTLP receiver) runs in processes of its own, apart from the store
    process (ingest, checks, dashboards): nothing the analysis does reaches the request path."""
    _needs("embedded", "`monitor up`")
    from monitor.runtime.apps import Embedded, Up

    store: dict[str, Any] = {"retention_days": retention_days}
    if data_dir is not None:
        store["url"] = f"chdb://{data_dir}"
    settings = _load(ctx, {"receiver": _receiver(host, grpc_port, http_port), "store": store,
                           "proxy": {"upstream": upstream, "port": proxy_port}, "scrape": {"url": scrape_url},
                           "checks": {"admin_port": admin_port}, "telemetry": {"metrics_port": metrics_port, "metrics_host": metrics_host},
                           "dashboard": _dashboard_overrides(dashboard_port, no_dashboard)})
    if not settings.store.is_embedded:
        raise click.ClickException("`monitor up` is the embedded mode and needs a chdb:// store; "
                                   "use `monitor ingest --clickhouse URL` for a ClickHouse server")
    _run(Embedded if single_process else Up, settings)


@main.command()
@click.option("--kafka", "bootstrap", default=None, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT].")
@click.option("--spool", "spool_path", type=click.Path(dir_okay=False), default=None,
              help="SQLite spool file [./monitor-spool/spool.sqlite].")
@_with(_common)
@click.pass_context
def sidecar(ctx, bootstrap, spool_path, upstream, proxy_port, scrape_url, host, grpc_port, http_port,
            metrics_port, metrics_host):
    """Run the OTLP receiver beside a model server and produce to Kafka (spooling while it is away)."""
    from monitor.runtime.apps import Sidecar

    settings = _load(ctx, {"receiver": _receiver(host, grpc_port, http_port),
                           "kafka": {"bootstrap_servers": bootstrap}, "spool": {"path": spool_path},
                           "proxy": {"upstream": upstream, "port": proxy_port}, "scrape": {"url": scrape_url},
                           "telemetry": {"metrics_port": metrics_port, "metrics_host": metrics_host}})
    _run(Sidecar, settings)


@main.command()
@click.option("--kafka", "bootstrap", default=None, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT].")
@click.option("--clickhouse", "url", default=None,
              help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--group-id", default=None, help="Consumer group [monitor-ingest].")
@click.option("--metrics-port", type=int, default=None, help="Port of this process's /metrics [9465].")
@click.option("--metrics-host", default=None, help="Bind address of /metrics [127.0.0.1].")
@click.pass_context
def ingest(ctx, bootstrap, url, group_id, metrics_port, metrics_host):
    """Consume the OTLP topics and write them to ClickHouse (one consumer-group member)."""
    from monitor.runtime.apps import Ingest

    settings = _load(ctx, {"kafka": {"bootstrap_servers": bootstrap, "group_id": group_id},
                           "store": {"url": url}, "telemetry": {"metrics_port": metrics_port, "metrics_host": metrics_host}})
    _store_needs(settings, "`monitor ingest` into a chdb:// store")
    _run(Ingest, settings)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="chdb data directory [./monitor-data].")
@click.option("--server-port", type=int, default=8000, show_default=True, help="Port of the reference server.")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Demo requests per second.")
@click.option("--phase-seconds", type=float, default=60.0, show_default=True,
              help="Length of each traffic phase (baseline, topic shift, long prompts, language, refusals, "
                   "latency).")
@click.option("--once", is_flag=True, help="Play the phases once, then keep serving without traffic.")
@_admin_port
@_with(_dashboard)
@_with(_common[1:])
@click.pass_context
def demo(ctx, data_dir, server_port, rate, phase_seconds, once, admin_port, dashboard_port, no_dashboard, proxy_port,
         scrape_url, host, grpc_port, http_port, metrics_port, metrics_host):
    """`monitor up` with the reference model server behind the capture proxy and phased demo traffic."""
    _needs("demo", "`monitor demo`")
    from monitor.runtime.demo import Demo

    store: dict[str, Any] = {}
    if data_dir is not None:
        store["url"] = f"chdb://{data_dir}"
    settings = _load(ctx, {"receiver": _receiver(host, grpc_port, http_port), "store": store,
                           "proxy": {"port": proxy_port},
                           "scrape": {"url": scrape_url or f"http://127.0.0.1:{server_port}/metrics"},
                           "checks": {"admin_port": admin_port}, "telemetry": {"metrics_port": metrics_port, "metrics_host": metrics_host},
                           "dashboard": _dashboard_overrides(dashboard_port, no_dashboard)})
    _run(lambda s: Demo(s, server_port=server_port, rate=rate, phase_seconds=phase_seconds, loop=not once),
         settings)


def _store_overrides(url: str | None, data_dir: str | None) -> dict[str, Any]:
    if url and data_dir:
        raise click.UsageError("give --clickhouse or --data-dir, not both")
    return {"url": url if url else (f"chdb://{data_dir}" if data_dir else None)}


@main.command()
@click.option("--model", default=None, help="Only this model (default: every model with events).")
@click.option("--window", default=None, help="Current window, e.g. 30m, 1h, 1d [checks.window].")
@click.option("--reference", type=click.Choice(["auto", "baseline", "day", "week"]), default=None,
              help="Reference window [checks.reference].")
@click.option("--only", default=None, help="Comma-separated checks: feature_drift,semantic_drift,quality,slo.")
@click.option("--clickhouse", "url", default=None, help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--data-dir", default=None, help="Shorthand for --clickhouse chdb://DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--verbose", is_flag=True, help="List passing checks too.")
@click.pass_context
def check(ctx, model, window, reference, only, url, data_dir, as_json, verbose):
    """Run the checks once and print them; exit 1 when a check fails (for cron and CI).

    While `monitor up` holds the embedded store, this asks it through its admin endpoint."""
    import json as _json

    from monitor.checks.report import render
    from monitor.runtime.admin import admin_available, admin_call

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    only_list = [c.strip() for c in only.split(",")] if only else None
    try:
        if settings.store.is_embedded and admin_available(settings):
            report = admin_call(settings, "/admin/check", {"model": model, "window": window,
                                                           "reference": reference, "only": only_list})
        else:
            _needs("checks", "`monitor check`")
            _store_needs(settings, "`monitor check` on a chdb:// store")
            from monitor.checks.runner import CheckRunner
            from monitor.runtime.apps import open_store
            store = open_store(settings)
            try:
                report = CheckRunner(store, settings.checks).run(model=model, window=window, reference=reference,
                                                                 only=only_list).as_dict()
                from monitor.runtime.records import (
                    record_local,  # records governance: audit_log
                )
                record_local(store, "run_checks", model or "", {"window": window, "reference": reference,
                                                                "only": only_list})
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    click.echo(_json.dumps(report, indent=2, default=str) if as_json else render(report, verbose))
    if report["status"] == "fail":
        sys.exit(1)


@main.command()
@click.option("--a", "side_a", required=True, help="Incumbent: MODEL[@VERSION][+ADAPTER].")
@click.option("--b", "side_b", required=True, help="Candidate: MODEL[@VERSION][+ADAPTER].")
@click.option("--window", default="24h", show_default=True, help="The last 30m, 1h, 24h, 7d ...")
@click.option("--no-semantic", is_flag=True, help="Skip the embedding comparisons (no torch needed).")
@click.option("--clickhouse", "url", default=None, help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--data-dir", default=None, help="Shorthand for --clickhouse chdb://DIR.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.pass_context
def compare(ctx, side_a, side_b, window, no_semantic, url, data_dir, as_json):
    """Compare two models, versions, adapters or endpoints on the same window (README "Comparing models"):
    latency, TTFT, tokens/s, quality rates, output length, cost, semantic drift and shadow-pair
    agreement, each difference with its test and p-value or confidence interval.

    While `monitor up` holds the embedded store, this asks it through its admin endpoint."""
    import json as _json

    from monitor.checks.compare.queries import parse_side
    from monitor.checks.compare.report import compare as run_compare
    from monitor.checks.compare.report import render
    from monitor.checks.windows import current_window
    from monitor.runtime.admin import admin_available, admin_call

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    try:
        a, b = parse_side(side_a), parse_side(side_b)
        w = current_window(window)
        if settings.store.is_embedded and admin_available(settings):
            out = admin_call(settings, "/admin/compare", {"a": side_a, "b": side_b, "window": window,
                                                          "semantic": not no_semantic})
        else:
            _store_needs(settings, "`monitor compare` on a chdb:// store")
            from monitor.runtime.apps import open_store
            store = open_store(settings)
            try:
                out = run_compare(store, a, b, w.start, w.end, semantic=not no_semantic,
                                  semantic_settings=settings.checks.semantic)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    click.echo(_json.dumps(out, indent=2, default=str) if as_json else render(out))


@main.group()
def baseline():
    """Pin or list reference windows for the checks."""


@baseline.command("pin")
@click.option("--model", required=True)
@click.option("--from", "start", required=True, help="ISO 8601 time (UTC if no zone) or -2h.")
@click.option("--to", "end", required=True, help="ISO 8601 time, -30m or now.")
@click.option("--group", default="", help="Only for this group, e.g. url.path=/v1/chat/completions.")
@click.option("--note", default="")
@click.option("--clickhouse", "url", default=None)
@click.option("--data-dir", default=None)
@click.pass_context
def baseline_pin(ctx, model, start, end, group, note, url, data_dir):
    """Use [--from, --to) of MODEL as the reference of its checks."""
    from monitor.checks.windows import pin_baseline
    from monitor.runtime.admin import admin_available, admin_call, parse_time

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    try:
        if settings.store.is_embedded and admin_available(settings):
            admin_call(settings, "/admin/baseline", {"model": model, "from": start, "to": end, "group": group,
                                                     "note": note})
        else:
            _store_needs(settings, "this command on a chdb:// store")
            from monitor.runtime.apps import open_store
            store = open_store(settings)
            try:
                pin_baseline(store, model, parse_time(start), parse_time(end), group, note)
                from monitor.runtime.records import (
                    record_local,  # records governance: audit_log
                )
                record_local(store, "pin_baseline", model, {"from": start, "to": end, "group": group, "note": note})
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    click.echo(f"baseline of {model}{' [' + group + ']' if group else ''}: {start} .. {end}")


@baseline.command("list")
@click.option("--clickhouse", "url", default=None)
@click.option("--data-dir", default=None)
@click.pass_context
def baseline_list(ctx, url, data_dir):
    """Show the pinned baselines."""
    from monitor.runtime.admin import admin_available, admin_call

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    try:
        if settings.store.is_embedded and admin_available(settings):
            rows = admin_call(settings, "/admin/baselines")
        else:
            _store_needs(settings, "this command on a chdb:// store")
            from monitor.checks.windows import list_baselines
            from monitor.runtime.apps import open_store
            store = open_store(settings)
            try:
                rows = list_baselines(store)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    for r in rows:
        click.echo(f"{r['model']}{' [' + r['group'] + ']' if r['group'] else ''}: {r['from']} .. {r['to']} "
                   f"(pinned {r['pinned_at']}){' ' + r['note'] if r['note'] else ''}")
    if not rows:
        click.echo("no baselines pinned; checks compare with the same window a day earlier")


@main.command()
@click.option("--clickhouse", "url", default=None, help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--metrics-port", type=int, default=None, help="Port of this process's /metrics [9467].")
@click.option("--metrics-host", default=None, help="Bind address of /metrics [127.0.0.1].")
@click.pass_context
def checks(ctx, url, metrics_port, metrics_host):
    """Run the checks on a schedule (distributed mode), writing results to ClickHouse."""
    from monitor.runtime.apps import ChecksService

    settings = _load(ctx, {"store": {"url": url}, "telemetry": {"metrics_port": metrics_port, "metrics_host": metrics_host}})
    _needs("checks", "`monitor checks`")
    _store_needs(settings, "`monitor checks` on a chdb:// store")
    _run(ChecksService, settings)


@main.group()
def alerts():
    """Alert channels and rules (see the `alerts` section of the config)."""


@alerts.command("test")
@click.option("--channel", required=True, help="A channel name from alerts.channels.")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
              help="Seconds to keep retrying before giving up.")
@click.option("--clickhouse", "url", default=None)
@click.option("--data-dir", default=None)
@click.pass_context
def alerts_test(ctx, channel, wait_s, url, data_dir):
    """Send a test notification to CHANNEL and print the outcome; exit 1 when it was not delivered.

    While `monitor up` holds the embedded store, it sends it (through its admin endpoint)."""
    from monitor.runtime.admin import admin_available, admin_call

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    if channel not in settings.alerts.channels:
        raise click.ClickException(f"no alert channel {channel!r} in the config; configured: "
                                   f"{', '.join(sorted(settings.alerts.channels)) or 'none'}")
    try:
        if settings.store.is_embedded and admin_available(settings):
            out = admin_call(settings, "/admin/alerts/test", {"channel": channel, "wait_s": wait_s},
                             timeout=wait_s + 120)
        else:
            _store_needs(settings, "`monitor alerts test` on a chdb:// store")
            from monitor.alerts.service import AlertService
            from monitor.runtime.apps import open_store
            store = open_store(settings)
            try:
                out = AlertService(store, settings.alerts, settings.checks.min_samples).send_test(channel, wait_s)
                from monitor.runtime.records import (
                    record_local,  # records governance: audit_log
                )
                record_local(store, "test_alert", channel, {"status": out.get("status")})
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    if out["status"] == "delivered":
        click.echo(f"delivered to {channel} (notification {out['notification_id']}, "
                   f"{out['attempts']} attempt{'s' if out['attempts'] != 1 else ''})")
        return
    click.echo(f"NOT delivered to {channel} after {out['attempts']} attempt(s): {out['error']}", err=True)
    sys.exit(1)


@alerts.command("list")
@click.option("--history", type=int, default=20, show_default=True, help="Recent alert events to show.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--clickhouse", "url", default=None)
@click.option("--data-dir", default=None)
@click.pass_context
def alerts_list(ctx, history, as_json, url, data_dir):
    """Firing alerts, recent fire/resolve/test events, and the notification outbox."""
    import json as _json

    from monitor.runtime.admin import admin_available, admin_call

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    try:
        if settings.store.is_embedded and admin_available(settings):
            out = admin_call(settings, f"/admin/alerts?history={int(history)}")
        else:
            _store_needs(settings, "`monitor alerts list` on a chdb:// store")
            from monitor.alerts.service import list_alerts
            from monitor.runtime.apps import open_store
            store = open_store(settings)
            try:
                out = list_alerts(store, history)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    if as_json:
        click.echo(_json.dumps(out, indent=2))
        return
    click.echo(f"firing ({len(out['firing'])}):")
    for a in out["firing"]:
        click.echo(f"  [{a['severity']}] {a['rule']} {a['model']}{' [' + a['group'] + ']' if a['group'] else ''}"
                   f" since {a['since']}: {a['summary']}")
    click.echo("recent:")
    for e in out["recent"]:
        click.echo(f"  {e['timestamp']} {e['event']:<7} {e['summary']}")
    if out["outbox"]:
        click.echo("outbox: " + ", ".join(f"{o['channel']} {o['status']} {o['count']}" for o in out["outbox"]))
    for d in out["dead"]:
        click.echo(f"  dead: {d['channel']} {d['event']} {d['notification_id']} after {d['attempts']} "
                   f"attempt(s): {d['error']}")


@main.command()
@click.option("--window", default="1h", show_default=True, help="How far back from now: 30m, 1h, 1d, 7d...")
@click.option("--model", default=None, help="Only this model.")
@click.option("--limit", type=int, default=50, show_default=True, help="Busiest clients listed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--clickhouse", "url", default=None, help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--data-dir", default=None, help="Shorthand for --clickhouse chdb://DIR.")
@click.pass_context
def clients(ctx, window, model, limit, as_json, url, data_dir):
    """Usage per client: requests, tokens, cost, error and refusal rates, latency, abuse flags.

    A client is the keyed hash of the API key it sent (else user:<id>); while `monitor up` holds
    the embedded store, this asks it through its admin endpoint."""
    import json as _json
    import urllib.parse
    from datetime import datetime, timezone

    from monitor.checks.windows import parse_duration
    from monitor.runtime.admin import admin_available, admin_call

    if not 1 <= limit <= 10_000:
        raise click.UsageError("--limit must be from 1 to 10000")
    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    try:
        span = parse_duration(window)
        if settings.store.is_embedded and admin_available(settings):
            query = urllib.parse.urlencode({k: v for k, v in (("window", window), ("model", model),
                                                               ("limit", limit)) if v})
            out = admin_call(settings, f"/admin/clients?{query}")
        else:
            _store_needs(settings, "`monitor clients` on a chdb:// store")
            from monitor.checks.clients import client_usage
            from monitor.runtime.apps import open_store
            end = datetime.now(timezone.utc)
            store = open_store(settings)
            try:
                out = client_usage(store, end - span, end, model, limit)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    except OverflowError:
        raise click.UsageError(f"--window {window} is too long") from None
    if as_json:
        click.echo(_json.dumps(out, indent=2))
        return
    click.echo(render_clients(out))


def render_clients(out: dict[str, Any]) -> str:
    """The table `monitor clients` prints."""
    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    def num(v, fmt="{:,.0f}"):
        return "-" if v is None else fmt.format(v)

    rows = out["clients"]
    head = (f"clients {out['from'][:19]} .. {out['to'][:19]} UTC{' model ' + out['model'] if out['model'] else ''}: "
            f"{out['total_clients']} (busiest {len(rows)})")
    if not rows:
        return head + "\nno requests in the window"
    lines = [head, f"{'client':<34} {'requests':>8} {'tokens in':>10} {'tokens out':>10} {'cost':>8} "
                   f"{'errors':>7} {'refusals':>8} {'p50 ms':>8} {'p95 ms':>8}  flags"]
    for r in rows:
        name = r["client"] if len(r["client"]) <= 34 else r["client"][:31] + "..."
        lines.append(f"{name:<34} {r['requests']:>8,} {num(r['input_tokens']):>10} {num(r['output_tokens']):>10} "
                     f"{num(r['cost'], '{:,.2f}'):>8} {pct(r['error_rate']):>7} {pct(r['refusal_rate']):>8} "
                     f"{num(r['latency_ms_p50']):>8} {num(r['latency_ms_p95']):>8}  {','.join(r['flags'])}")
        if r.get("flag_summary"):
            lines.append(f"    {r['flag_summary']}")
    return "\n".join(lines)


@main.command()
@click.option("--clickhouse", "url", default=None,
              help="http(s)://user:pass@host:8123/db (a read-only user: deploy/clickhouse/users.d) or chdb:///path.")
@click.option("--data-dir", default=None, help="Shorthand for --clickhouse chdb://DIR (not while `monitor up` holds it).")
@click.option("--host", default=None, help="Bind address [127.0.0.1]; 0.0.0.0 in a container.")
@click.option("--port", type=int, default=None, help="Port [8501].")
@click.option("--metrics-port", type=int, default=None, help="Port of this process's /metrics [9468].")
@click.option("--metrics-host", default=None, help="Bind address of /metrics [127.0.0.1].")
@click.pass_context
def dashboard(ctx, url, data_dir, host, port, metrics_port, metrics_host):
    """Serve the dashboards (Streamlit) over a ClickHouse store, read-only (distributed mode).

    `monitor up` serves them itself; use this against a ClickHouse server."""
    _needs("dashboards", "`monitor dashboard`")
    from monitor.runtime.apps import DashboardApp

    settings = _load(ctx, {"store": _store_overrides(url, data_dir), "dashboard": {"host": host, "port": port},
                           "telemetry": {"metrics_port": metrics_port, "metrics_host": metrics_host}})
    _store_needs(settings, "`monitor dashboard` on a chdb:// store")
    _run(DashboardApp, settings)


@main.command("demo-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--otlp-endpoint", default=None,
              help="Where to send its vLLM-shaped llm_request spans (OTLP/gRPC), e.g. http://127.0.0.1:4317.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model-name", default="monitor-demo-tiny", show_default=True)
@click.option("--slowdown", type=float, default=1.0, show_default=True,
              help="Multiply the compute per token (a latency regression); also POST /admin/slowdown.")
@click.option("--blocked-topics", default=None, help="Comma-separated topics the server refuses.")
def demo_server(host, port, otlp_endpoint, seed, model_name, slowdown, blocked_topics):
    """A small torch language model behind an OpenAI-compatible API, traced and measured like vLLM."""
    _setup_logging("INFO")
    _needs("demo", "`monitor demo-server`")
    from monitor.demo.server import DEFAULT_BLOCKED_TOPICS, serve

    topics = tuple(t.strip() for t in blocked_topics.split(",") if t.strip()) if blocked_topics else \
        DEFAULT_BLOCKED_TOPICS
    serve(host=host, port=port, otlp_endpoint=otlp_endpoint, seed=seed, model_name=model_name,
          slowdown=slowdown, blocked_topics=topics)


@main.command()
@click.option("--url", default=None, help="A /metrics URL [http://127.0.0.1:9464/metrics].")
@click.option("--port", type=int, default=None, help="Shorthand for --url http://127.0.0.1:PORT/metrics.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx, url, port, as_json):
    """Print the health of a running monitor (receiver, queue, spool, consumer lag, inserts).

    Sends telemetry.auth_token (MONITOR_TELEMETRY__AUTH_TOKEN) when it is set."""
    import urllib.error

    from monitor.auth import secret_value
    from monitor.status import fetch, render

    try:
        token = secret_value(_config.load(ctx.obj.get("config")).telemetry.auth_token)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    url = url or f"http://127.0.0.1:{port or 9464}/metrics"
    try:
        snapshot = fetch(url, token=token)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise click.ClickException(f"{url} wants a bearer token: set MONITOR_TELEMETRY__AUTH_TOKEN "
                                       "(telemetry.auth_token) to the monitor's") from None
        raise click.ClickException(f"{url} answered {exc.code}; is it a monitor's /metrics?") from None
    except OSError as exc:
        raise click.ClickException(f"no monitor answers at {url} ({exc}); is it running? "
                                   "pass --url or --port of its /metrics") from None
    click.echo(render(snapshot, as_json))


# -- records governance (README "Records governance"): erase, export, audit ----------------------


@main.command()
@click.option("--user", default=None, help="An end-user id (enduser.id / user.id; the user_id column).")
@click.option("--client", default=None, help="A client: its key hash or client id (`monitor clients` lists them).")
@click.option("--conversation", default=None, help="A conversation id (gen_ai.conversation.id / session.id).")
@click.option("--dry-run", is_flag=True, help="Count the rows per table; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting (asked only on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option("--clickhouse", "url", default=None, help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--data-dir", default=None, help="Shorthand for --clickhouse chdb://DIR.")
@click.pass_context
def erase(ctx, user, client, conversation, dry_run, yes, as_json, url, data_dir):
    """Delete one person's rows from every table (spans, events, logs, embeddings...) and print the
    counts per table. Give exactly one of --user, --client, --conversation.

    While `monitor up` holds the embedded store, this asks it through its admin endpoint."""
    import json as _json

    from monitor.runtime.admin import admin_available, admin_call
    from monitor.runtime.records import erase_payload

    try:
        kind, value = erase_payload(user, client, conversation)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    if not dry_run and not yes and sys.stdin.isatty():
        click.confirm(f"Delete every row of {kind} {value!r} from {settings.store.database_name()}? "
                      "(--dry-run counts them first)", abort=True)
    try:
        if settings.store.is_embedded and admin_available(settings):
            out = admin_call(settings, "/admin/erase", {kind: value, "dry_run": dry_run})
        else:
            _store_needs(settings, "`monitor erase` on a chdb:// store")
            from monitor.runtime.apps import open_store
            from monitor.runtime.records import erase_direct
            store = open_store(settings)
            try:
                out = erase_direct(store, kind, value, dry_run)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    if as_json:
        click.echo(_json.dumps(out, indent=2))
        return
    verb = "would delete" if out["dry_run"] else "deleted"
    click.echo(f"{kind} {out['target']}: {out['traces']} trace(s); {verb}:")
    for t in out["tables"]:
        if t["matched"] or out["dry_run"]:
            what = "rewritten (examples taken out)" if t["how"] == "rewrite" else "rows"
            left = f", {t['left']} left" if t["left"] else ""
            click.echo(f"  {t['table']:<36} {t['matched']:>9,} {what}{left}")
    if not any(t["matched"] for t in out["tables"]):
        click.echo("  nothing matched")
    for note in out.get("notes", []):
        click.echo(f"note: {note}", err=True)
    click.echo(f"({out['seconds']:.1f}s; recorded in the audit log as {out['target']})")


@main.command("export")
@click.option("--from", "start", required=True, help="ISO 8601 time (UTC if no zone) or -7d.")
@click.option("--to", "end", default="now", show_default=True, help="ISO 8601 time, -1h or now.")
@click.option("--model", default=None, help="Only this model (and, for spans and logs, its traces).")
@click.option("--table", type=click.Choice(["inference_events", "otel_traces", "otel_logs", "audit_log"]),
              default="inference_events", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="The file to write.")
@click.option("--force", is_flag=True, help="Replace --out when it exists.")
@click.option("--clickhouse", "url", default=None, help="chdb:///path or http(s)://user:pass@host:8123/db.")
@click.option("--data-dir", default=None, help="Shorthand for --clickhouse chdb://DIR.")
@click.pass_context
def export(ctx, start, end, model, table, fmt, out_path, force, url, data_dir):
    """Write the rows of [--from, --to) to a Parquet or JSON-lines file, for an audit; recorded in
    the audit log (who, what range, how many rows) before the first byte is written."""
    import os
    from pathlib import Path

    from monitor.runtime.admin import admin_available, admin_download

    out = Path(out_path).expanduser().resolve()
    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; pass --force to replace it")
    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    body = {"from": start, "to": end, "model": model, "table": table, "format": fmt}
    part = out.with_name(out.name + ".part")
    try:
        if settings.store.is_embedded and admin_available(settings):
            try:
                with open(part, "wb") as fh:
                    headers = admin_download(settings, "/admin/export", body, fh)
                os.replace(part, out)
            finally:
                part.unlink(missing_ok=True)
            result = {"rows": int(headers.get("X-Monitor-Rows", 0)), "bytes": out.stat().st_size,
                      "seconds": float(headers.get("X-Monitor-Seconds", 0))}
        else:
            _store_needs(settings, "`monitor export` on a chdb:// store")
            from monitor.runtime.apps import open_store
            from monitor.runtime.records import export_direct
            store = open_store(settings)
            try:
                result = export_direct(store, out, body)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc}") from None
    click.echo(f"{result['rows']:,} rows of {table} -> {out} ({fmt}, {result['bytes']:,} bytes, "
               f"{result['seconds']:.1f}s)")


@main.command("audit")
@click.option("--since", default="7d", show_default=True, help="How far back: 1h, 7d, 90d...")
@click.option("--actor", default=None, help="Only this actor (admin-token, dashboard-token, local, a user).")
@click.option("--action", type=click.Choice(["search", "open_request", "pin_baseline", "export", "erase",
                                             "test_alert", "run_checks"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--clickhouse", "url", default=None)
@click.option("--data-dir", default=None)
@click.pass_context
def audit(ctx, since, actor, action, limit, as_json, url, data_dir):
    """Who searched prompts, opened requests, pinned baselines, exported and erased (newest first)."""
    import json as _json
    import urllib.parse

    from monitor.runtime.admin import admin_available, admin_call

    settings = _load(ctx, {"store": _store_overrides(url, data_dir)})
    try:
        if settings.store.is_embedded and admin_available(settings):
            query = urllib.parse.urlencode({k: v for k, v in (("since", since), ("actor", actor), ("action", action),
                                                               ("limit", limit)) if v})
            rows = admin_call(settings, f"/admin/audit?{query}")
        else:
            _store_needs(settings, "`monitor audit` on a chdb:// store")
            from monitor.runtime.apps import open_store
            from monitor.runtime.records import audit_direct
            store = open_store(settings)
            try:
                rows = audit_direct(store, since, actor, action, limit)
            finally:
                store.close()
    except MonitorError as exc:
        raise _click_error(exc) from None
    if as_json:
        click.echo(_json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        details = _json.dumps(r["details"], default=str, ensure_ascii=False) if not isinstance(r["details"], str) \
            else r["details"]
        click.echo(f"{r['timestamp'][:23]} {r['actor']:<16} {r['action']:<13} {r['target'][:60]!r} "
                   f"[{r['origin']}{' ' + r['address'] if r['address'] else ''}] {details[:200]}")
    if not rows:
        click.echo(f"no audit entries in the last {since}")


if __name__ == "__main__":
    main()
