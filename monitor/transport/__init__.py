"""Transports from the receiver to ingest: Kafka with a durable spool, or an in-process queue."""
