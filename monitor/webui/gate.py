"""The dashboards' front door: an ASGI layer around Streamlit's own app, in the same server.

Streamlit has no token check of its own, and its pages show prompts and completions, so every
request (page, static file, the ``/_stcore/stream`` websocket every page runs over) passes here
first:

- A credential in the query string is refused (400), right or wrong: URLs end up in histories,
  logs and ``Referer`` headers (and Streamlit would hand it to the page as ``st.query_params``).
- Without ``dashboard.auth_token`` (loopback only: :func:`monitor.auth.check_exposure`), the
  ``Host`` must be one DNS rebinding cannot produce (403), so a web page the operator opens
  cannot read the pages under a name of its own.
- With it, a request passes with ``Authorization: Bearer <token>`` (what an authenticating
  reverse proxy in front adds to every request it lets through) or with the session cookie of the
  login form (``POST /_monitor/login``; HttpOnly, SameSite=Strict, Secure over https; 12 hours).
  Otherwise a page is answered 401 with the login form, the websocket is refused and anything
  else is 401. ``/_stcore/health`` stays open for probes (it says ``ok``, nothing more).

Sessions live in this process: a restart asks for the token again.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from monitor.auth import bearer_ok, host_allowed, query_has_credential

__all__ = ["Gate", "LOGIN_PATH", "LOGOUT_PATH", "SESSION_TTL_S"]

LOGIN_PATH = "/_monitor/login"
LOGOUT_PATH = "/_monitor/logout"
SESSION_TTL_S = 12 * 3600.0
_MAX_SESSIONS = 10_000
_MAX_FORM_BYTES = 4096
_OPEN_PATHS = ("/_stcore/health",)
_FAILED_LOGIN_DELAY_S = 1.0

_PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
]

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llm-monitor: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:26rem;margin:12vh auto;padding:0 1rem;color:#222}}
input{{width:100%;padding:.5rem;margin:.5rem 0;box-sizing:border-box}}button{{padding:.5rem 1.2rem}}
.err{{color:#b00020}}</style></head>
<body><h1>llm-monitor dashboards</h1>
<p>These pages show prompts and completions. Enter the dashboard token
(<code>dashboard.auth_token</code>).</p>{error}
<form method="post" action="{action}">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Sign in</button></form></body></html>
"""


def _headers(scope: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or ():
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


def _cookies(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out.setdefault(name, value)
    return out


class Gate:
    """ASGI middleware over Streamlit's app (see the module docstring). ``token`` None: no login,
    Host check only."""

    def __init__(self, app: Any, token: str | None, bind_host: str, metrics: Any = None):
        self.app = app
        self.token = token
        self.bind_host = bind_host
        self.metrics = metrics
        self._sessions: dict[str, float] = {}  # sha256(session id) -> expiry (monotonic)

    async def __call__(self, scope: dict, receive, send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path = scope.get("path") or "/"
        query = (scope.get("query_string") or b"").decode("latin-1")
        if query and query_has_credential(parse_qsl(query, keep_blank_values=True), self.token):
            await self._deny(scope, send, 400, "credential_in_query",
                             "credentials are not accepted in the URL; sign in with the form or send "
                             "Authorization: Bearer <token>")
            return
        if self.token is None:
            if not host_allowed(headers.get("host"), self.bind_host):
                await self._deny(scope, send, 403, "bad_host", "the Host header does not name this dashboard")
                return
            await self.app(scope, receive, send)
            return
        if kind == "http" and path == LOGIN_PATH:
            await self._login(scope, receive, send, headers)
            return
        if kind == "http" and path == LOGOUT_PATH:
            await self._logout(scope, send, headers)
            return
        if (kind == "http" and path in _OPEN_PATHS) or bearer_ok(headers.get("authorization"), self.token) \
                or self._session_ok(headers, scope):
            await self.app(scope, receive, send)
            return
        if kind == "http" and scope.get("method") in ("GET", "HEAD") and "text/html" in headers.get("accept", ""):
            self._count("unauthenticated")
            await self._page(send, 401, "")
            return
        await self._deny(scope, send, 401, "unauthenticated", "sign in first (dashboard.auth_token is set)",
                         [(b"www-authenticate", b"Bearer")])

    # -- sessions ---------------------------------------------------------------------------

    def _cookie_name(self, scope: dict) -> str:
        server = scope.get("server") or ("", 0)
        return f"monitor_dashboard_{server[1] if len(server) > 1 else 0}"

    def _session_ok(self, headers: dict[str, str], scope: dict) -> bool:
        sid = _cookies(headers.get("cookie")).get(self._cookie_name(scope))
        if not sid:
            return False
        key = hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()
        expiry = self._sessions.get(key)
        if expiry is None:
            return False
        if expiry < time.monotonic():
            self._sessions.pop(key, None)
            return False
        return True

    def _new_session(self) -> str:
        now = time.monotonic()
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions = {k: t for k, t in self._sessions.items() if t > now}
            while len(self._sessions) >= _MAX_SESSIONS:  # the oldest go first
                self._sessions.pop(min(self._sessions, key=self._sessions.__getitem__))
        sid = secrets.token_urlsafe(32)
        self._sessions[hashlib.sha256(sid.encode()).hexdigest()] = now + SESSION_TTL_S
        return sid

    # -- the login form ---------------------------------------------------------------------

    async def _login(self, scope: dict, receive, send, headers: dict[str, str]) -> None:
        if scope.get("method") != "POST":
            await self._page(send, 200, "")
            return
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            await self._deny(scope, send, 403, "browser_origin", "a sign-in from another site is refused")
            return
        body = b""
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > _MAX_FORM_BYTES:
                await self._deny(scope, send, 413, "too_large", "the form is too large")
                return
            if not message.get("more_body"):
                break
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        assert self.token is not None
        if not bearer_ok(f"Bearer {fields.get('token', '')}", self.token):
            self._count("unauthenticated")
            await asyncio.sleep(_FAILED_LOGIN_DELAY_S)  # slows guessing down (tokens are long anyway)
            await self._page(send, 401, "wrong token")
            return
        secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
        cookie = (f"{self._cookie_name(scope)}={self._new_session()}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={int(SESSION_TTL_S)}{secure}")
        await self._raw(send, 303, b"", [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                                         (b"cache-control", b"no-store")])

    async def _logout(self, scope: dict, send, headers: dict[str, str]) -> None:
        name = self._cookie_name(scope)
        sid = _cookies(headers.get("cookie")).get(name)
        if sid:
            self._sessions.pop(hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest(), None)
        await self._raw(send, 303, b"", [(b"location", LOGIN_PATH.encode()),
                                         (b"set-cookie", f"{name}=; Path=/; Max-Age=0".encode())])

    # -- answers ----------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_refused.labels("dashboard", reason).inc()

    async def _deny(self, scope: dict, send, status: int, reason: str, message: str,
                    headers: list | None = None) -> None:
        self._count(reason)
        if scope.get("type") == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
            return
        await self._raw(send, status, message.encode() + b"\n",
                        [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"),
                         *(headers or [])])

    async def _page(self, send, status: int, error: str) -> None:
        body = _LOGIN_PAGE.format(error=f'<p class="err">{html.escape(error)}</p>' if error else "",
                                  action=LOGIN_PATH).encode()
        await self._raw(send, status, body, _PAGE_HEADERS)

    @staticmethod
    async def _raw(send, status: int, body: bytes, headers: list) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
