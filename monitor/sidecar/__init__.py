"""Sources and processors that run beside the model server: capture proxy, /metrics scraper,
NVML sampler, redaction. Everything they produce is OTLP, published through the same
:class:`~monitor.receiver.ingress.Ingress` as what the OTLP receiver gets."""
