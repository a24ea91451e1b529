"""Signatures of generic webhook notifications, and the check a receiver runs on them.

Every webhook request carries::

    X-Monitor-Timestamp: 1764412800                      (unix seconds when this attempt was sent)
    X-Monitor-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>
    Idempotency-Key: <notification id>                   (the same on every retry of one notification)

The timestamp is inside the signed text, so a captured request cannot be replayed later than
``tolerance_s`` with a new timestamp; within the tolerance a receiver drops repeats by
``Idempotency-Key`` (retries of one notification share it by design).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Mapping

__all__ = ["sign", "verify", "signature_headers", "TIMESTAMP_HEADER", "SIGNATURE_HEADER", "IDEMPOTENCY_HEADER"]

TIMESTAMP_HEADER = "X-Monitor-Timestamp"
SIGNATURE_HEADER = "X-Monitor-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 over ``f"{timestamp}.".encode() + body``."""
    mac = hmac.new(_key(secret), f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signature_headers(secret: str | bytes, body: bytes, notification_id: str, now: float | None = None) -> dict:
    ts = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(secret, ts, body), IDEMPOTENCY_HEADER: notification_id}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; HTTP header names are not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def verify(secret: str | bytes, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """True only when the signature matches ``body`` and the signed timestamp is within
    ``tolerance_s`` of now (either way). Fails closed: a missing or malformed header is False.

    ``headers`` is any mapping (aiohttp's, http.server's, a dict; names case-insensitive).
    ``X-Monitor-Signature`` may list several ``v1=`` values separated by commas (secret rotation).
    """
    ts_text, sig_text = _header(headers, TIMESTAMP_HEADER), _header(headers, SIGNATURE_HEADER)
    if not ts_text or not sig_text or not _key(secret):
        return False
    try:
        ts = int(ts_text)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    return any(hmac.compare_digest(expected, s.strip()) for s in sig_text.split(","))
