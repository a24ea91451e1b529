"""ClickHouse: the client (chdb or server), versioned schema, batched idempotent inserts."""
