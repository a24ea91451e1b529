"""Extraction and abuse detection per client: volume, templated probing, embedding coverage and
PRADA, logprob read-out, jailbreak concentration (README "Clients and abuse")."""

from monitor.checks.abuse.check import METRICS, AbuseCheck

__all__ = ["AbuseCheck", "METRICS"]
