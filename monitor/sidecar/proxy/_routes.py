"""Several upstreams behind one capture proxy, chosen by the model a request asks for.

``proxy.routes`` maps a requested model name (or glob) to an upstream; a request no route matches
goes to ``proxy.upstream``. On the request path this costs, per captured request and only when
routes are configured, one search of the buffered body for ``"model"`` (a regular expression
compiled in C; a body that holds the key more than once, e.g. in a tool's JSON schema, is parsed
with orjson instead) and a dictionary look-up of the name (routes are matched once per name).

A managed route's key (``api_key_env``) is read once at start and replaces the client's
``Authorization`` header on the way to that upstream; it lives in this process's memory only and
never reaches a capture record, a span, a log line or the store.
"""

from __future__ import annotations

import re

import orjson

from monitor.config import ProxyRoute, ProxySettings
from monitor.sidecar.proxy._upstream import UpstreamPool

__all__ = ["Router", "model_of"]

_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){0,512})"')
_MAX_NAMES = 4096
"""Distinct requested model names remembered with their route; past it names are matched each time."""


def model_of(body: bytes) -> str | None:
    """The top-level ``model`` of a JSON request body, or None (not JSON, no such key)."""
    hits = _MODEL.findall(body, 0)
    if len(hits) == 1 and b"\\" not in hits[0]:
        try:
            return hits[0].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not hits:
        return None
    try:  # the key appears more than once (nested schemas), or the name has escapes: parse
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


class _Route:
    __slots__ = ("auth", "config", "pool")

    def __init__(self, config: ProxyRoute, pool: UpstreamPool, auth: bytes | None) -> None:
        self.config = config
        self.pool = pool
        self.auth = auth
        """``Bearer <key>`` for the upstream, replacing the client's header; None: the client's goes on."""


class Router:
    """The upstream pool (and credential) for each requested model."""

    def __init__(self, settings: ProxySettings, default: UpstreamPool) -> None:
        self.default = default
        self.settings = settings
        self.routes: list[_Route] = []
        pools: dict[str, UpstreamPool] = {default.base: default}
        for i, r in enumerate(settings.routes):
            key = r.start_key(i)
            pool = pools.get(r.upstream)
            if pool is None:
                pool = pools[r.upstream] = UpstreamPool(r.upstream)
            self.routes.append(_Route(r, pool, f"Bearer {key}".encode("latin-1") if key else None))
        self.pools = list(pools.values())
        self._by_name: dict[str, _Route | None] = {}

    def __bool__(self) -> bool:
        return bool(self.routes)

    def route(self, body: bytes) -> _Route | None:
        """The route of the request whose body is ``body``; None: the default upstream."""
        model = model_of(body)
        if model is None:
            return None
        try:
            return self._by_name[model]
        except KeyError:
            pass
        config = self.settings.route_for(model)
        found = None if config is None else next(r for r in self.routes if r.config is config)
        if len(self._by_name) < _MAX_NAMES:
            self._by_name[model] = found
        return found

    def expire(self, now_ns: int) -> None:
        for p in self.pools:
            p.expire(now_ns)

    def close(self) -> None:
        for p in self.pools:
            p.close()
