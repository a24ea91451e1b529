"""deploy/clickhouse: server config, users, and the cluster DDL.

The XML files are checked for shape here and, where chdb can load a server
config, by starting an embedded ClickHouse with them. The cluster DDL is
checked against the single-node schema by running both in chdb (with the
cluster-only parts rewritten away) and comparing what ClickHouse made of them:
columns in order with their types, codecs and defaults, skipping indexes,
PARTITION BY / ORDER BY / TTL / SETTINGS, and the materialized view.

chdb allows one data directory per process, and other tests in the same run
may already have opened one, so every use of chdb here runs in a subprocess of
its own with its own temporary directory and reports back as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from string import Template

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "clickhouse"
SCHEMAS = ROOT / "schemas" / "clickhouse"
CLUSTER = DEPLOY / "cluster"
SYSTEM_LOG_TTL = DEPLOY / "config.d" / "system-log-ttl.xml"
USERS = DEPLOY / "users.d" / "monitor-users.xml"

RETENTION_DAYS = 30
SUBPROCESS_TIMEOUT_S = 300

# System logs that must be bounded (a <ttl>, a TTL inside <engine>) or disabled.
REQUIRED_LOG_SECTIONS = {
    "trace_log", "text_log", "query_log", "part_log", "metric_log", "asynchronous_metric_log",
    "query_thread_log", "query_views_log", "processors_profile_log", "opentelemetry_span_log",
    "session_log", "zookeeper_log", "blob_storage_log", "error_log", "latency_log",
    "query_metric_log", "backup_log", "s3queue_log", "crash_log", "asynchronous_insert_log",
}
# Off in the stock config.xml: a section that only sets a TTL would turn them ON.
OFF_BY_DEFAULT = {"session_log", "zookeeper_log"}

# The system log sections of ClickHouse's stock config.xml, reduced to what
# matters for merging: which ones exist (and so are on), and which declare
# <partition_by>, <ttl> or <engine> that a config.d file merges with.
STOCK_SYSTEM_LOGS = """<clickhouse>
    <query_log><database>system</database><table>query_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds></query_log>
    <trace_log><database>system</database><table>trace_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds></trace_log>
    <query_thread_log><database>system</database><table>query_thread_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by></query_thread_log>
    <query_views_log><database>system</database><table>query_views_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by></query_views_log>
    <part_log><database>system</database><table>part_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by></part_log>
    <text_log><database>system</database><table>text_log</table><level>trace</level></text_log>
    <metric_log><database>system</database><table>metric_log</table>
        <collect_interval_milliseconds>1000</collect_interval_milliseconds></metric_log>
    <latency_log><database>system</database><table>latency_log</table>
        <collect_interval_milliseconds>1000</collect_interval_milliseconds></latency_log>
    <error_log><database>system</database><table>error_log</table>
        <collect_interval_milliseconds>1000</collect_interval_milliseconds></error_log>
    <query_metric_log><database>system</database><table>query_metric_log</table>
        <collect_interval_milliseconds>1000</collect_interval_milliseconds></query_metric_log>
    <asynchronous_metric_log><database>system</database><table>asynchronous_metric_log</table>
        <flush_interval_milliseconds>7000</flush_interval_milliseconds></asynchronous_metric_log>
    <opentelemetry_span_log>
        <engine>engine MergeTree partition by toYYYYMM(finish_date) order by (finish_date, finish_time_us)</engine>
        <database>system</database><table>opentelemetry_span_log</table></opentelemetry_span_log>
    <crash_log><database>system</database><table>crash_log</table><partition_by />
        <flush_interval_milliseconds>1000</flush_interval_milliseconds></crash_log>
    <processors_profile_log><database>system</database><table>processors_profile_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <ttl>event_date + INTERVAL 30 DAY DELETE</ttl></processors_profile_log>
    <asynchronous_insert_log><database>system</database><table>asynchronous_insert_log</table>
        <partition_by>event_date</partition_by><ttl>event_date + INTERVAL 3 DAY</ttl></asynchronous_insert_log>
    <backup_log><database>system</database><table>backup_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by></backup_log>
    <s3queue_log><database>system</database><table>s3queue_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by></s3queue_log>
    <blob_storage_log><database>system</database><table>blob_storage_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <ttl>event_date + INTERVAL 30 DAY</ttl></blob_storage_log>
</clickhouse>
"""

# Distributed sharding keys: by trace id where rows of one trace belong together.
from monitor.store.cluster_ddl import SHARDING_KEYS as _KEYS  # noqa: E402

SHARDING_KEYS = {table: key for table, (key, _why) in _KEYS.items()}

ON_CLUSTER = re.compile(r"\s+ON\s+CLUSTER\s+'\{cluster\}'")
# ReplicatedMergeTree('path', 'replica') or a variant with engine arguments after them, e.g.
# ReplicatedReplacingMergeTree('path', 'replica', version).
REPLICATED = re.compile(r"Replicated(\w*)MergeTree\(\s*'([^']*)'\s*,\s*'([^']*)'\s*(?:,\s*([^)]*))?\)")
DISTRIBUTED = re.compile(r"ENGINE\s*=\s*Distributed\((.*)\)\s*$", re.S)
CREATE = re.compile(
    r"^CREATE\s+(TABLE|MATERIALIZED\s+VIEW|DATABASE)\s+IF\s+NOT\s+EXISTS\s+(?:`[^`]+`\.)?`?(\w+)`?", re.I)


# -- helpers ------------------------------------------------------------------

def statements(sql: str) -> list[str]:
    """Split like monitor.store.migrate: drop whole-line comments, split on ';'."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def fill(sql: str, database: str) -> str:
    """The substitution monitor.store.migrate does (and README.md tells users to do)."""
    return Template(sql).substitute(database=f"`{database}`", retention_days=RETENTION_DAYS)


def split_args(s: str) -> list[str]:
    """Top-level comma split of an engine's argument list."""
    out, depth, quote, cur = [], 0, None, []
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def unquote(ident: str) -> str:
    return ident.strip().strip("`'\"")


def created_name(stmt: str) -> tuple[str, str]:
    m = CREATE.match(stmt)
    assert m, f"not a CREATE ... IF NOT EXISTS statement:\n{stmt[:200]}"
    return re.sub(r"\s+", " ", m.group(1).upper()), m.group(2)


def cluster_to_chdb(stmt: str) -> str:
    """One cluster statement in a form a single chdb process can run.

    ON CLUSTER goes, ReplicatedMergeTree(...) becomes MergeTree, and a
    Distributed table becomes a Merge table over the same local table, which
    keeps its columns (from AS) and proves that the table it names exists.
    """
    stmt = ON_CLUSTER.sub("", stmt)
    stmt = REPLICATED.sub(lambda m: f"{m.group(1)}MergeTree({m.group(4) or ''})", stmt)
    m = DISTRIBUTED.search(stmt)
    if m:
        _cluster, database, table, _key = split_args(m.group(1))
        stmt = stmt[:m.start()] + f"ENGINE = Merge({database}, '^{unquote(table)}$')"
    return stmt


def _need_chdb() -> None:
    # Looked up, not imported: this process must not start a chdb engine.
    if importlib.util.find_spec("chdb") is None or importlib.util.find_spec("clickhouse_connect") is None:
        pytest.skip("chdb / clickhouse-connect not installed")


def run_isolated(script: str, payload: dict, tmp_path: Path) -> dict:
    """Run `script` in a fresh interpreter (its own chdb engine) and return its JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(payload), capture_output=True,
        text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=tmp_path)
    marker = "@@RESULT@@ "
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"chdb subprocess failed (rc {proc.returncode})\n"
                    f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(marker):])


# -- XML ------------------------------------------------------------------------

def xml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.xml"))


def test_xml_files_exist():
    names = {p.relative_to(DEPLOY).as_posix() for p in xml_files()}
    assert {"config.d/system-log-ttl.xml", "users.d/monitor-users.xml"} <= names


@pytest.mark.parametrize("path", xml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_xml_root_is_clickhouse(path):
    root = ET.parse(path).getroot()
    assert root.tag == "clickhouse", f"{path}: root element is <{root.tag}>, ClickHouse wants <clickhouse>"


def _is_removed(el: ET.Element) -> bool:
    return el.get("remove", "").lower() in ("1", "true")


def _log_sections() -> dict[str, ET.Element]:
    root = ET.parse(SYSTEM_LOG_TTL).getroot()
    sections = {}
    for el in root:
        assert el.tag not in sections, f"<{el.tag}> appears twice"
        sections[el.tag] = el
    return sections


def test_every_system_log_section_has_ttl_or_is_removed():
    sections = _log_sections()
    missing = REQUIRED_LOG_SECTIONS - sections.keys()
    assert not missing, f"system logs without a section: {sorted(missing)}"
    problems = []
    for name, el in sections.items():
        assert name.endswith("_log"), f"<{name}> is not a system log section"
        if _is_removed(el):
            if len(el) or (el.text or "").strip():
                problems.append(f"{name}: remove=\"1\" with content (the content is ignored)")
            continue
        ttl = el.find("ttl")
        engine = el.find("engine")
        if engine is not None:
            # ClickHouse refuses to start if <engine> meets <ttl>/<partition_by>/<order_by>.
            for clash in ("ttl", "partition_by", "order_by", "storage_policy"):
                if el.find(clash) is not None:
                    problems.append(f"{name}: <engine> together with <{clash}>")
            if el.get("replace") not in ("1", "true"):
                problems.append(f"{name}: <engine> must replace the whole stock section (replace=\"1\")")
            if not re.search(r"\bTTL\b.+\bINTERVAL\s+\d+\s+DAY\b", engine.text or "", re.I | re.S):
                problems.append(f"{name}: <engine> has no TTL ... INTERVAL n DAY")
        elif ttl is None or not re.search(r"\bINTERVAL\s+\d+\s+DAY\b", ttl.text or "", re.I):
            problems.append(f"{name}: neither a <ttl> with INTERVAL n DAY nor remove=\"1\"")
        interval = el.find("flush_interval_milliseconds")
        if interval is None or not (interval.text or "").strip().isdigit():
            problems.append(f"{name}: no numeric <flush_interval_milliseconds>")
    for name in OFF_BY_DEFAULT & sections.keys():
        if not _is_removed(sections[name]):
            problems.append(f"{name}: off by default; a section without remove=\"1\" turns it on")
    assert not problems, "\n".join(problems)


def _ttl_days(el: ET.Element) -> int:
    text = (el.find("engine") if el.find("engine") is not None else el.find("ttl")).text
    return int(re.search(r"INTERVAL\s+(\d+)\s+DAY", text, re.I).group(1))


CONFIG_SCRIPT = textwrap.dedent("""
    import json, sys
    job = json.load(sys.stdin)
    out = {"started": False, "error": None, "tables": {}}
    try:
        import chdb
        conn = chdb.connect(f"file:{job['data']}?config-file={job['config']}")
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        out["started"] = True
        cur.execute("SYSTEM FLUSH LOGS")
        cur.fetchall()
        cur.execute("SELECT name, engine_full FROM system.tables WHERE database = 'system'")
        out["tables"] = {name: engine for name, engine in cur.fetchall()}
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print("@@RESULT@@ " + json.dumps(out), flush=True)
""")


def _load_config(tmp_path: Path, name: str, extra: dict[str, str]) -> dict:
    """Start chdb on the stock system log sections plus config.d files `extra`."""
    base = tmp_path / name
    (base / "config.d").mkdir(parents=True)
    (base / "config.xml").write_text(STOCK_SYSTEM_LOGS)
    for fname, text in extra.items():
        (base / "config.d" / fname).write_text(text)
    return run_isolated(CONFIG_SCRIPT, {"data": str(base / "data"), "config": str(base / "config.xml")}, base)


def test_system_log_config_loads_in_clickhouse(tmp_path):
    """Merged into the stock sections, the file starts a server and sets every TTL.

    A control run with the stock sections alone shows that this chdb loads a
    server config at all (else skip); a second control with the known-bad
    form (a bare <ttl> on opentelemetry_span_log) shows that a config the
    server rejects is caught.
    """
    _need_chdb()
    stock = _load_config(tmp_path, "stock", {})
    if not stock["started"] or "query_log" not in stock["tables"]:
        pytest.skip(f"this chdb does not load a server config with system logs: {stock}")
    bad = _load_config(tmp_path, "bad", {
        "bad.xml": "<clickhouse><opentelemetry_span_log><ttl>finish_date + INTERVAL 7 DAY DELETE"
                   "</ttl></opentelemetry_span_log></clickhouse>"})
    assert not bad["started"], "harness control: a bare <ttl> next to a stock <engine> should not start"

    ours = _load_config(tmp_path, "ours", {SYSTEM_LOG_TTL.name: SYSTEM_LOG_TTL.read_text()})
    assert ours["started"], f"server does not start with {SYSTEM_LOG_TTL.name}: {ours['error']}"
    tables = ours["tables"]
    assert "query_log" in tables, sorted(tables)
    problems = []
    for name, el in _log_sections().items():
        if _is_removed(el):
            if name in tables:
                problems.append(f"{name}: removed, but the server created it")
        elif name in tables:
            days = _ttl_days(el)
            if f"toIntervalDay({days})" not in tables[name]:
                problems.append(f"{name}: expected TTL of {days} days, table is {tables[name]}")
    assert not problems, "\n".join(problems)


def test_users():
    root = ET.parse(USERS).getroot()
    profiles = root.find("profiles")
    users = root.find("users")
    assert profiles is not None and users is not None

    dashboard = users.find("monitor_dashboard")
    ingest = users.find("monitor_ingest")
    assert dashboard is not None and ingest is not None

    ro_name = dashboard.findtext("profile")
    ro = profiles.find(ro_name)
    assert ro is not None, f"monitor_dashboard uses profile {ro_name!r}, which is not defined"
    assert ro.findtext("readonly") == "2", "dashboard profile must be readonly=2 (SELECT and SET only)"

    rw = profiles.find(ingest.findtext("profile") or "default")
    if rw is not None:
        assert rw.findtext("readonly") in (None, "0"), "the ingest profile must allow writes"

    raw = USERS.read_text()
    raw = raw[raw.index("<users>"):]
    for user in (dashboard, ingest):
        assert user.find("password") is None, f"{user.tag}: plaintext <password>"
        hex_ = user.findtext("password_sha256_hex")
        assert hex_ is not None and re.fullmatch(r"[0-9a-f]{64}", hex_), f"{user.tag}: password_sha256_hex"
        # the placeholder is flagged right where it has to be changed
        block = raw[raw.index(f"<{user.tag}>"):raw.index(f"</{user.tag}>")]
        assert "CHANGE ME" in block, f"{user.tag}: password placeholder not marked CHANGE ME"
        grants = [q.text or "" for q in user.iterfind("grants/query")]
        assert grants, f"{user.tag}: no grants"

    dash_grants = " ".join(q.text for q in dashboard.iterfind("grants/query"))
    assert re.fullmatch(r"GRANT SELECT ON \w+\.\*", dash_grants.strip()), dash_grants
    ingest_grants = " ".join(q.text for q in ingest.iterfind("grants/query"))
    assert "INSERT" in ingest_grants


# -- cluster DDL --------------------------------------------------------------------

def schema_files() -> list[Path]:
    return sorted(SCHEMAS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def cluster_files() -> list[Path]:
    return sorted(CLUSTER.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def test_cluster_has_one_file_per_schema_file():
    assert schema_files(), SCHEMAS
    assert [p.name for p in cluster_files()] == [p.name for p in schema_files()]
    assert (CLUSTER / "README.md").is_file()
    assert (DEPLOY / "README.md").is_file()


def test_cluster_files_are_generated_from_the_schema():
    """deploy/clickhouse/cluster is exactly what `python -m monitor.store.cluster_ddl` writes from
    schemas/clickhouse (no hand copy to drift), and the generator refuses what it cannot shape."""
    from monitor.store import cluster_ddl

    assert cluster_ddl.main(["--check"]) == 0, "run: python -m monitor.store.cluster_ddl"
    with pytest.raises(ValueError, match="no sharding key"):
        cluster_ddl.generate("9999_x.sql", "CREATE TABLE IF NOT EXISTS $database.nobody (\n  a UInt8\n) "
                                           "ENGINE = MergeTree ORDER BY a;\n")
    with pytest.raises(ValueError, match="no cluster form"):
        cluster_ddl.generate("9999_x.sql", "DROP TABLE $database.otel_logs;\n")


def test_cluster_ddl_shape():
    """ON CLUSTER everywhere, Replicated local tables, Distributed tables on the right keys."""
    problems = []
    for path in cluster_files():
        text = path.read_text()
        for stmt in statements(fill(text, "db")):
            if stmt.lstrip().upper().startswith(("ALTER TABLE", "DROP VIEW")):
                # a later migration (a view it makes again is dropped first): it must reach every node
                # like the CREATE statements did
                if not ON_CLUSTER.search(stmt):
                    problems.append(f"{path.name}: {stmt.split()[0]} without ON CLUSTER '{{cluster}}'")
                continue
            kind, name = created_name(stmt)
            where = f"{path.name}: {kind} {name}"
            if not ON_CLUSTER.search(stmt):
                problems.append(f"{where}: no ON CLUSTER '{{cluster}}'")
            if "non_replicated_deduplication_window" in stmt:
                problems.append(f"{where}: non_replicated_deduplication_window on a replicated table")
            if kind != "TABLE":
                continue
            dist = DISTRIBUTED.search(stmt)
            repl = REPLICATED.search(stmt)
            if name.endswith("_local"):
                expected = f"/clickhouse/tables/{{shard}}/{{database}}/{name}"
                if not repl or repl.group(2, 3) != (expected, "{replica}"):
                    problems.append(f"{where}: engine is not ReplicatedMergeTree('{expected}', '{{replica}}')")
            elif dist:
                cluster, database, table, *key = split_args(dist.group(1))
                want = SHARDING_KEYS[name]
                if unquote(cluster) != "{cluster}":
                    problems.append(f"{where}: Distributed over cluster {cluster}, not '{{cluster}}'")
                if unquote(database) != "db" or unquote(table) != f"{name}_local":
                    problems.append(f"{where}: Distributed over {database}.{table}, not db.{name}_local")
                if [re.sub(r"\s+", "", k) for k in key] != [re.sub(r"\s+", "", want)]:
                    problems.append(f"{where}: sharding key {key}, expected {want}")
                if not re.search(rf"\bAS\s+`db`\.{name}_local\b", stmt):
                    problems.append(f"{where}: should take its columns AS db.{name}_local")
            else:
                problems.append(f"{where}: neither a *_local ReplicatedMergeTree nor a Distributed table")
    assert not problems, "\n".join(problems)


SCHEMA_SCRIPT = textwrap.dedent("""
    import json, sys
    import clickhouse_connect

    job = json.load(sys.stdin)
    client = clickhouse_connect.get_client(dsn=f"chdb://{job['path']}")
    # A failed step skips the rest of its group only: the groups are independent.
    out = {"errors": {}, "results": {}, "databases": {}}

    for step in job["steps"]:
        if step["group"] in out["errors"]:
            continue
        try:
            if step["kind"] == "query":
                out["results"][step["label"]] = [list(r) for r in client.query(step["sql"]).result_rows]
            else:
                client.command(step["sql"])
        except Exception as e:
            out["errors"][step["group"]] = {
                "label": step["label"], "sql": step["sql"], "error": f"{type(e).__name__}: {e}"}

    def describe(db):
        p = {"db": db}
        tables = client.query(
            "SELECT name, engine, engine_full, partition_key, sorting_key, primary_key, as_select "
            "FROM system.tables WHERE database = {db:String}", parameters=p).result_rows
        columns = client.query(
            "SELECT table, name, type, position, compression_codec, default_kind, default_expression "
            "FROM system.columns WHERE database = {db:String} ORDER BY table, position",
            parameters=p).result_rows
        indices = client.query(
            "SELECT table, name, type_full, expr, granularity FROM system.data_skipping_indices "
            "WHERE database = {db:String} ORDER BY table, name", parameters=p).result_rows
        info = {}
        for name, engine, engine_full, pkey, skey, prim, as_select in tables:
            info[name] = {"engine": engine, "engine_full": engine_full, "partition_key": pkey,
                          "sorting_key": skey, "primary_key": prim, "as_select": as_select,
                          "columns": [], "indices": []}
        for table, *col in columns:
            info[table]["columns"].append(list(col))
        for table, *idx in indices:
            info[table]["indices"].append(list(idx))
        return info

    for db in job["databases"]:
        if db not in out["errors"]:
            out["databases"][db] = describe(db)
    print("@@RESULT@@ " + json.dumps(out), flush=True)
""")

SINGLE_DB = "single_node"
CLUSTER_DB = "cluster_ddl"
MUTANT_DB = "cluster_mutant"


def _norm(text: str, db: str) -> str:
    return re.sub(r"\s+", " ", text.replace(f"`{db}`.", "DB.").replace(f"{db}.", "DB."))


def compare(single: dict, cluster: dict, single_db: str, cluster_db: str) -> list[str]:
    """Differences between the single-node schema and the cluster DDL as ClickHouse built them."""
    problems = []
    merge_trees = {n for n, t in single.items() if t["engine"].endswith("MergeTree")}
    views = {n for n, t in single.items() if t["engine"] == "MaterializedView"}
    expected = merge_trees | {f"{n}_local" for n in merge_trees} | views
    if set(cluster) != expected:
        problems.append(f"cluster tables differ: missing {sorted(expected - set(cluster))}, "
                        f"extra {sorted(set(cluster) - expected)}")
    for name in sorted(merge_trees):
        want = single[name]
        local = cluster.get(f"{name}_local")
        if local is None:
            continue
        cols = lambda t: [(c[0], c[1], c[2]) for c in t["columns"]]  # noqa: E731
        if cols(local) != cols(want):
            problems.append(f"{name}_local columns (name, type, position) differ from {name}:\n"
                            f"  single:  {cols(want)}\n  cluster: {cols(local)}")
        else:
            for w, g in zip(want["columns"], local["columns"]):
                if w != g:
                    problems.append(f"{name}_local.{w[0]} codec/default: single-node {w[3:]}, cluster {g[3:]}")
        if local["indices"] != want["indices"]:
            problems.append(f"{name}_local indexes differ: {want['indices']} != {local['indices']}")
        for key in ("engine", "partition_key", "sorting_key", "primary_key"):
            if local[key] != want[key]:
                problems.append(f"{name}_local {key}: {local[key]!r}, single-node {want[key]!r}")
        # PARTITION BY, ORDER BY, TTL and SETTINGS, less the one setting that
        # only non-replicated tables have.
        single_full = re.sub(r",?\s*non_replicated_deduplication_window = \d+", "", want["engine_full"])
        if local["engine_full"] != single_full:
            problems.append(f"{name}_local engine:\n  single:  {single_full}\n  cluster: {local['engine_full']}")
        dist = cluster.get(name)
        if dist is not None and cols(dist) != cols(want):
            problems.append(f"{name} (the Distributed table) columns differ from single-node {name}")
    for name in sorted(views):
        if name not in cluster:
            continue
        want = _norm(single[name]["as_select"], single_db)
        got = _norm(cluster[name]["as_select"], cluster_db)
        want_local = re.sub(r"\bFROM DB\.(\w+)", r"FROM DB.\1_local", want)
        if got != want_local:
            problems.append(f"view {name} should select from the local table:\n"
                            f"  expected: {want_local}\n  got:      {got}")
    return problems


def _mutant(text: str) -> tuple[str, str]:
    """The first cluster file with one column of its first *_local table deleted.

    The column is one that nothing else in the file names (no key, index or
    view), so the broken DDL still runs and only the comparison can notice.
    """
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.search(r"_local ON CLUSTER '\{cluster\}' \($", line))
    for i in range(start + 1, len(lines)):
        m = re.match(r"\s+(\w+) [A-Z]\w*(?:\(.*\))?( CODEC\(.*\))?,$", lines[i])
        if m is None:
            break
        if len(re.findall(rf"\b{m.group(1)}\b", text)) == 1:
            return "".join(lines[:i] + lines[i + 1:]), m.group(1)
    raise AssertionError("no column to delete in the first cluster file")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Single-node schema, cluster DDL and a broken cluster DDL, built in one chdb subprocess."""
    _need_chdb()
    steps = []

    def add(db: str, sqls: list[str]):
        steps.append({"group": db, "kind": "command", "label": f"{db}: create database",
                      "sql": f"CREATE DATABASE IF NOT EXISTS `{db}`"})
        for i, sql in enumerate(sqls):
            steps.append({"group": db, "kind": "command", "label": f"{db}: statement {i}", "sql": sql})

    add(SINGLE_DB, [s for p in schema_files() for s in statements(fill(p.read_text(), SINGLE_DB))])
    add(CLUSTER_DB, [cluster_to_chdb(s) for p in cluster_files()
                     for s in statements(fill(p.read_text(), CLUSTER_DB))])
    texts = [p.read_text() for p in cluster_files()]
    texts[0], dropped = _mutant(texts[0])
    add(MUTANT_DB, [cluster_to_chdb(s) for t in texts for s in statements(fill(t, MUTANT_DB))])

    # Each Distributed table's sharding key must be a valid expression over its local table.
    for path in cluster_files():
        for stmt in statements(fill(path.read_text(), CLUSTER_DB)):
            m = DISTRIBUTED.search(stmt)
            if m:
                _c, database, table, *key = split_args(m.group(1))
                steps.append({"group": "probes", "kind": "query", "label": f"key {unquote(table)}",
                              "sql": f"SELECT {', '.join(key)} FROM {database}.{table} LIMIT 0"})
    # The view fires on inserts into the local spans table and fills the local lookup table.
    steps.append({"group": "probes", "kind": "command", "label": "insert span",
                  "sql": f"INSERT INTO `{CLUSTER_DB}`.otel_traces_local (Timestamp, TraceId, SpanId) "
                         "VALUES (now64(9), 'feedbeef', 'a1'), (now64(9) + 1, 'feedbeef', 'a2')"})
    steps.append({"group": "probes", "kind": "query", "label": "lookup rows",
                  "sql": f"SELECT TraceId, End > Start FROM `{CLUSTER_DB}`.otel_traces_trace_id_ts_local"})

    tmp = tmp_path_factory.mktemp("chdb-deploy")
    payload = {"path": str(tmp / "data"), "steps": steps, "databases": [SINGLE_DB, CLUSTER_DB, MUTANT_DB]}
    return run_isolated(SCHEMA_SCRIPT, payload, tmp), dropped


def _check_built(out: dict, *groups: str) -> None:
    failed = [f"{g}: {e['label']}\n{e['error']}\n{e['sql']}" for g, e in out["errors"].items() if g in groups]
    assert not failed, "statement failed in chdb:\n" + "\n\n".join(failed)


def test_single_node_and_cluster_ddl_run(built):
    out, _ = built
    _check_built(out, SINGLE_DB, CLUSTER_DB, "probes")
    assert out["databases"][SINGLE_DB], "the single-node schema created no tables"


def test_cluster_local_tables_match_single_node(built):
    out, _ = built
    _check_built(out, SINGLE_DB, CLUSTER_DB)
    dbs = out["databases"]
    problems = compare(dbs[SINGLE_DB], dbs[CLUSTER_DB], SINGLE_DB, CLUSTER_DB)
    assert not problems, "\n".join(problems)


def test_comparison_catches_a_missing_column(built):
    """The same comparison, on the cluster DDL with one column deleted, reports that column."""
    out, dropped = built
    _check_built(out, SINGLE_DB, MUTANT_DB)
    dbs = out["databases"]
    problems = compare(dbs[SINGLE_DB], dbs[MUTANT_DB], SINGLE_DB, MUTANT_DB)
    assert any(dropped in p for p in problems), problems


def test_sharding_keys_are_valid_over_local_tables(built):
    out, _ = built
    _check_built(out, CLUSTER_DB, "probes")
    keyed = {label[len("key "):] for label in out["results"] if label.startswith("key ")}
    local = {n for n in out["databases"][CLUSTER_DB] if n.endswith("_local")}
    assert keyed == local, f"Distributed tables over {sorted(keyed)}, local tables {sorted(local)}"


def test_trace_lookup_view_writes_local_table(built):
    out, _ = built
    _check_built(out, CLUSTER_DB, "probes")
    rows = [[trace_id, bool(later)] for trace_id, later in out["results"]["lookup rows"]]
    assert rows == [["feedbeef", True]], rows
