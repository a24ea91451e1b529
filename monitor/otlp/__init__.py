"""The OTLP wire format and its mapping to rows: codec, validation, Kafka splitting, GenAI dialects."""
