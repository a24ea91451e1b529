"""Who called: a client identity per model request, and the request parameters extraction shows in.

Pure functions (no I/O) except :func:`load_or_create_secret`.

The capture proxy (in the pipeline process, when it turns a capture record into a span) calls
:func:`client_attributes` with the client's request headers, the parsed request body and what it
knows of the connection; the result is a few span attributes:

=================================  ===============================================================
``monitor.client.key_hash``        HMAC-SHA256(secret, API key or bearer token), hex, truncated to
                                   ``clients.hash_bytes``. The key itself is never kept.
``enduser.id``                     the first of ``clients.user_headers``, else the OpenAI body's
                                   ``user`` (or ``safety_identifier``)
``gen_ai.conversation.id``         the first of ``clients.conversation_headers``
``monitor.client.address_hash``    HMAC of ``client.address`` when there is neither a key nor a user
``monitor.request.logprobs``       the body asked for log probabilities (``logprobs``)
``monitor.request.top_logprobs``   how many alternatives per token (``top_logprobs``, or the legacy
                                   completions' integer ``logprobs``)
``monitor.request.logit_bias``     entries of ``logit_bias``
=================================  ===============================================================

Spans from an instrumented server or SDK carry the same facts as attributes of their own
(``enduser.id``, ``user.id``, ``gen_ai.conversation.id``, ``session.id``, and
``monitor.client.key_hash`` where a gateway hashed the key); ingest reads both through
:func:`identity_from_attributes`, which also decides the ``client_id`` the checks and the Clients
page group by: the key hash, else ``user:<id>``, else ``addr:<hash>``, else ``""`` (anonymous).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["client_attributes", "client_identity", "request_features", "identity_from_attributes",
           "key_hash", "credential", "load_or_create_secret", "secret_path", "resolve_secret", "wanted_headers",
           "KEY_HASH_ATTR", "ADDRESS_HASH_ATTR", "HASH_ATTRS", "HEX_HASH", "USER_ATTRS", "CONVERSATION_ATTRS", "MAX_ID_CHARS",
           "SECRET_FILE"]

KEY_HASH_ATTR = "monitor.client.key_hash"
ADDRESS_HASH_ATTR = "monitor.client.address_hash"
HASH_ATTRS = frozenset({KEY_HASH_ATTR, ADDRESS_HASH_ATTR})
HEX_HASH = re.compile(r"[0-9a-f]{8,64}")
"""What a value of :data:`HASH_ATTRS` looks like when it is a hash (``fullmatch``): an id, which
redaction leaves alone (a phone-number-like run of digits inside a digest is not a phone number)."""
USER_ATTRS = ("enduser.id", "user.id")
"""Span attributes naming the end user, first present wins (OTel semantic conventions)."""
CONVERSATION_ATTRS = ("gen_ai.conversation.id", "session.id")
LOGPROBS_ATTR = "monitor.request.logprobs"
TOP_LOGPROBS_ATTR = "monitor.request.top_logprobs"
LOGIT_BIAS_ATTR = "monitor.request.logit_bias"
MAX_ID_CHARS = 256
"""User and conversation ids are cut here (a client chooses them; a row must stay small)."""
SECRET_FILE = "client-secret"
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_SCHEMES = ("bearer ", "basic ", "token ", "apikey ")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- the secret -------------------------------------------------------------------------------

def secret_path(settings: Any) -> Path:
    """Where the generated secret lives: the data directory of ``monitor up`` (a ``chdb://`` store),
    else beside the spool (``monitor sidecar``)."""
    if settings.store.is_embedded:
        return settings.store.chdb_path() / SECRET_FILE
    return Path(settings.spool.path).expanduser().resolve().parent / SECRET_FILE


def load_or_create_secret(path: Path) -> bytes:
    """The secret in ``path``; made (32 random bytes, hex, mode 0600) when the file does not exist.
    Two processes starting at once agree: the file is created exclusively, the loser reads it."""
    path = Path(path)
    try:
        text = path.read_text().strip()
        if text:
            return text.encode()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value.encode()


def resolve_secret(settings: Any) -> bytes:
    """``clients.secret`` when configured, else the generated one (:func:`secret_path`)."""
    configured = settings.clients.secret
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value().encode()
    return load_or_create_secret(secret_path(settings))


# -- pieces -----------------------------------------------------------------------------------

def key_hash(secret: bytes, value: str, nbytes: int = 16) -> str:
    """HMAC-SHA256(secret, value) as hex, the first ``nbytes`` bytes."""
    return hmac.new(secret, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:2 * nbytes]


def _headers(headers: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None) -> dict[str, str]:
    """Lower-cased names; bytes decoded; the first value of a repeated header wins."""
    out: dict[str, str] = {}
    if not headers:
        return out
    items = headers.items() if isinstance(headers, Mapping) else headers
    for k, v in items:
        k = (k.decode("latin-1") if isinstance(k, (bytes, bytearray)) else str(k)).strip().lower()
        if isinstance(v, (list, tuple)):
            v = v[0] if v else ""
        v = v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else str(v)
        out.setdefault(k, v.strip())
    return out


def wanted_headers(settings: Any) -> tuple[str, ...]:
    """The request headers (lower case) :func:`client_attributes` reads: the only ones the proxy
    needs to copy into its capture record."""
    return tuple(dict.fromkeys(h.lower() for h in (*settings.key_headers, *settings.user_headers,
                                                     *settings.conversation_headers)))


def credential(headers: Mapping[str, str], settings: Any) -> str:
    """The client's API key or token from the first of ``settings.key_headers`` present, its scheme
    (``Bearer``, ``Basic``, ...) stripped; ``""`` when there is none."""
    for name in settings.key_headers:
        v = headers.get(name.lower(), "")
        if not v:
            continue
        low = v.lower()
        for scheme in _SCHEMES:
            if low.startswith(scheme) or low == scheme.rstrip():  # "Bearer" alone: no credential
                v = v[len(scheme):].strip()
                break
        if v:
            return v
    return ""


def _clean_id(v: Any) -> str:
    if isinstance(v, str):
        # printable ASCII holds no control character: nothing to take out
        return (v if v.isascii() and v.isprintable() else _CONTROL.sub("", v)).strip()[:MAX_ID_CHARS]
    if v is None or isinstance(v, (dict, list, bool)):
        return ""
    s = _CONTROL.sub("", str(v)).strip()
    return s[:MAX_ID_CHARS]


def _body(body: Any) -> dict[str, Any]:
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            body = json.loads(bytes(body) if not isinstance(body, str) else body)
        except (ValueError, UnicodeDecodeError):
            return {}
    return body if isinstance(body, dict) else {}


def request_features(body: Any) -> dict[str, Any]:
    """The request parameters model extraction shows in (Carlini et al. 2024): log probabilities
    asked for, alternatives per token, logit bias entries. Keys as in the module table; absent ones
    left out. ``body``: the parsed JSON request (or its bytes)."""
    r = _body(body)
    out: dict[str, Any] = {}
    opts = r.get("options") if isinstance(r.get("options"), dict) else {}
    lp = r.get("logprobs", opts.get("logprobs"))
    top = r.get("top_logprobs", opts.get("top_logprobs"))
    if isinstance(lp, bool):
        if lp:
            out[LOGPROBS_ATTR] = True
    elif isinstance(lp, int) and lp >= 0:  # legacy /v1/completions: logprobs=N alternatives
        out[LOGPROBS_ATTR] = True
        out[TOP_LOGPROBS_ATTR] = min(lp, 65535)
    if isinstance(top, int) and not isinstance(top, bool) and top > 0:
        out[TOP_LOGPROBS_ATTR] = min(top, 65535)
        out.setdefault(LOGPROBS_ATTR, True)
    bias = r.get("logit_bias")
    if isinstance(bias, dict) and bias:
        out[LOGIT_BIAS_ATTR] = min(len(bias), 65535)
    return out


# -- the identity -----------------------------------------------------------------------------

def client_identity(headers: Any, body: Any, attributes: Mapping[str, Any] | None, settings: Any,
                    secret: bytes | None = None) -> dict[str, str]:
    """Who sent one request: ``{"client_key_hash", "user_id", "conversation_id", "address_hash"}``
    (``""`` when unknown).

    ``headers``: the client's request headers (a mapping or ``(name, value)`` pairs; any case);
    ``body``: its JSON body, parsed or as bytes; ``attributes``: what else is known (``client.address``,
    and span attributes such as ``enduser.id`` that win over headers); ``settings``: the ``clients``
    section; ``secret``: the HMAC key (default ``settings.secret``; see :func:`resolve_secret`).
    """
    attributes = attributes or {}
    if secret is None:
        if settings.secret is None or not settings.secret.get_secret_value():
            raise ValueError("client_identity needs the secret: pass resolve_secret(settings)")
        secret = settings.secret.get_secret_value().encode()
    h = _headers(headers)
    r = _body(body)
    key = credential(h, settings)
    out = {"client_key_hash": key_hash(secret, key, settings.hash_bytes) if key else "",
           "user_id": "", "conversation_id": "", "address_hash": ""}
    for name in USER_ATTRS:
        out["user_id"] = _clean_id(attributes.get(name))
        if out["user_id"]:
            break
    if not out["user_id"]:
        for name in settings.user_headers:
            out["user_id"] = _clean_id(h.get(name.lower()))
            if out["user_id"]:
                break
    if not out["user_id"]:
        out["user_id"] = _clean_id(r.get("user")) or _clean_id(r.get("safety_identifier"))
    for name in CONVERSATION_ATTRS:
        out["conversation_id"] = _clean_id(attributes.get(name))
        if out["conversation_id"]:
            break
    if not out["conversation_id"]:
        for name in settings.conversation_headers:
            out["conversation_id"] = _clean_id(h.get(name.lower()))
            if out["conversation_id"]:
                break
    addr = _clean_id(attributes.get("client.address"))
    if addr and settings.address_fallback and not key and not out["user_id"]:
        out["address_hash"] = key_hash(secret, "addr:" + addr, settings.hash_bytes)
    return out


def client_attributes(headers: Any, body: Any, attributes: Mapping[str, Any] | None, settings: Any,
                      secret: bytes | None = None) -> dict[str, Any]:
    """The span attributes for one captured request: its identity (:func:`client_identity`) and the
    extraction-relevant request parameters (:func:`request_features`); only the known ones.
    Call it where the proxy builds its span, and add the result to the span's attributes."""
    ident = client_identity(headers, body, attributes, settings, secret)
    out: dict[str, Any] = {}
    if ident["client_key_hash"]:
        out[KEY_HASH_ATTR] = ident["client_key_hash"]
    if ident["user_id"]:
        out["enduser.id"] = ident["user_id"]
    if ident["conversation_id"]:
        out["gen_ai.conversation.id"] = ident["conversation_id"]
    if ident["address_hash"]:
        out[ADDRESS_HASH_ATTR] = ident["address_hash"]
    out.update(request_features(body))
    return out


def identity_from_attributes(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``client_id``, ``client_key_hash``, ``user_id``, ``conversation_id`` of a span from its
    attributes (ingest). A ``monitor.client.key_hash`` that is not a hex hash is ignored: whatever
    sent it, a raw key must not land in a column."""
    return dict(zip(("client_id", "client_key_hash", "user_id", "conversation_id"), identity_tuple(attrs)))


def _hex_id(v: Any) -> str:
    if not v:
        return ""
    s = str(v).strip().lower()
    return s if _HEX.match(s) else ""


def _first_id(get: Callable[[str], Any], keys: Iterable[str]) -> str:
    """The first of ``keys`` whose value is a usable id (cleaned), else ``""``."""
    for k in keys:
        v = get(k)
        if v is not None:
            found = _clean_id(v)
            if found:
                return found
    return ""


def identity_tuple(attrs: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """:func:`identity_from_attributes` as ``(client_id, client_key_hash, user_id, conversation_id)``."""
    get = attrs.get
    kh = get(KEY_HASH_ATTR)
    kh = _hex_id(kh) if kh else ""
    user, conv = _first_id(get, USER_ATTRS), _first_id(get, CONVERSATION_ATTRS)
    client = kh or (f"user:{user}" if user else "")
    if not client:
        addr = get(ADDRESS_HASH_ATTR)
        addr = _hex_id(addr) if addr else ""
        client = f"addr:{addr}" if addr else ""
    return client, kh, user, conv
