"""Ingest: transport messages to ClickHouse rows (embedded queue or Kafka consumer group)."""
