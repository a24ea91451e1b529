"""Checks: statistical and semantic drift, quality signals and SLOs, results written to ClickHouse."""
