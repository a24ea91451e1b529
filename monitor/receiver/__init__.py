"""The OTLP receiver: gRPC (4317) and HTTP protobuf/JSON (4318) in front of one :class:`Ingress`."""
