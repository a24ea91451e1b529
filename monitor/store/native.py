"""Rows in ClickHouse's Native format, made where the store is not.

An insert through clickhouse-connect encodes its rows in the calling process, under that process's
GIL, and chdb holds the GIL while it runs the insert: in the process that owns the store, encoding
and writing cannot overlap. Ingest's worker processes (:mod:`monitor.ingest.prepare`) therefore
encode a batch's rows here, with clickhouse-connect's own Native serialisation (the bytes its
``insert`` would send), and the store process only hands the block to ClickHouse
(:meth:`monitor.store.client.Store.insert_native`). The column types come from the store
(:func:`column_types`), so a block is built for the table as it is.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from monitor.errors import RejectedData

__all__ = ["column_types", "encode"]


def column_types(store: Any, table: str, columns: Sequence[str]) -> tuple[str, ...] | None:
    """The ClickHouse type of each of ``columns`` of ``table`` in ``store``; None when the table
    lacks one of them (then its rows are encoded where they are inserted, as before)."""
    found = dict(store.query_rows(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
        {"t": table}))
    if not all(c in found for c in columns):
        return None
    return tuple(found[c] for c in columns)


@lru_cache(maxsize=512)
def _type(name: str) -> Any:
    from clickhouse_connect.datatypes.registry import get_from_name

    return get_from_name(name)


def encode(table: str, columns: Sequence[str], types: Sequence[str], rows: list[list]) -> bytes:
    """``rows`` (values in ``columns`` order) as one Native block for ``table`` (an insert body; blocks
    laid end to end are one too).

    Raises :class:`RejectedData` when a value does not fit its column (what clickhouse-connect's
    ``insert`` raises in the same case, mapped as :meth:`Store.insert` maps it)."""
    from clickhouse_connect.driver.insert import InsertContext
    from clickhouse_connect.driver.transform import NativeTransform

    ctx = InsertContext(table, list(columns), [_type(t) for t in types], data=rows, block_size=max(1, len(rows)))
    out = bytearray()
    try:
        for i, chunk in enumerate(NativeTransform.build_insert(ctx)):
            if ctx.insert_exception is not None:
                raise ctx.insert_exception
            if i == 0:  # the first chunk starts with the statement an HTTP insert sends before the data
                chunk = chunk[chunk.index(b"\n") + 1:]
            out += chunk
        if ctx.insert_exception is not None:
            raise ctx.insert_exception
    except (ArithmeticError, TypeError, ValueError, UnicodeError, struct.error) as exc:
        raise RejectedData(f"{table}: a value does not fit its column ({type(exc).__name__}: {exc})") from exc
    return bytes(out)

