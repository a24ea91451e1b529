"""Versioned schema: apply ``schemas/clickhouse/NNNN_name.sql`` in order, once each.

Applied versions are recorded in ``schema_migrations`` (version, name,
checksum, time). A file whose checksum changed after it was applied is
reported, not re-run: schema changes go in a new, higher-numbered file.
Retention is a template variable (``store.retention_days``); after the files, every
table's TTL is brought to the retention settings (per table, per model:
:mod:`monitor.store.retention`), which alters the tables whose TTL changed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources
from pathlib import Path
from string import Template

from monitor.store.client import Store
from monitor.store.retention import apply_retention

__all__ = ["migrate", "check_schema", "schema_dir", "migration_files"]

log = logging.getLogger("monitor.store")

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def schema_dir() -> Path:
    """schemas/clickhouse in a source checkout, or the copy shipped inside the wheel."""
    repo = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"
    if repo.is_dir():
        return repo
    return Path(str(resources.files("monitor") / "_schemas" / "clickhouse"))


def migration_files() -> list[tuple[int, str, Path]]:
    out = []
    for p in sorted(schema_dir().iterdir()):
        m = _FILE.match(p.name)
        if m:
            out.append((int(m.group(1)), m.group(2), p))
    return out


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def migrate(store: Store, retention_days: int, retention=None) -> list[int]:
    """Apply pending migrations, then the retention (``retention``: the ``retention`` settings; None:
    their defaults); returns the versions applied now."""
    db = store.database
    store.command(
        f"CREATE TABLE IF NOT EXISTS `{db}`.schema_migrations ("
        "version UInt32, name String, checksum String, applied_at DateTime64(3) DEFAULT now64(3)"
        ") ENGINE = MergeTree ORDER BY version")
    done = {v: c for v, c in store.query_rows(f"SELECT version, checksum FROM `{db}`.schema_migrations")}
    applied = []
    for version, name, path in migration_files():
        text = path.read_text()
        checksum = hashlib.sha256(text.encode()).hexdigest()[:16]
        if version in done:
            if done[version] != checksum:
                log.warning("schema file %s changed after it was applied; put schema changes in a new file",
                            path.name)
            continue
        sql = Template(text).substitute(database=f"`{db}`", retention_days=int(retention_days))
        for stmt in _statements(sql):
            store.command(stmt)
        store.insert("schema_migrations", [[version, name, checksum]], ("version", "name", "checksum"))
        applied.append(version)
        log.info("applied schema %04d_%s to %s", version, name, store.describe())
    if retention is None:
        from monitor.config import RetentionSettings
        retention = RetentionSettings()
    apply_retention(store, retention_days, retention)
    return applied


def check_schema(store: Store) -> None:
    """With ``store.apply_schema: false``: fail at start, with what to do, if a table is missing."""
    from monitor.errors import ConfigError
    from monitor.store.tables import TABLE_COLUMNS

    have = {r[0] for r in store.query_rows(
        "SELECT name FROM system.tables WHERE database = {db:String}", {"db": store.database})}
    missing = sorted(set(TABLE_COLUMNS) - have)
    if missing:
        raise ConfigError(
            f"store.apply_schema is false but {store.describe()} lacks {', '.join(missing)}: apply "
            "deploy/clickhouse/cluster/*.sql (see its README) or set store.apply_schema: true")
