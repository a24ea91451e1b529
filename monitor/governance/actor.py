"""Who is acting: the ``actor`` of an audit entry, from whatever identity the caller has.

One place decides it, so that authentication can be wired in without touching the callers:

- the admin endpoint (``monitor check`` / ``baseline`` / ``erase`` / ``export`` through ``monitor up``):
  :data:`ADMIN_TOKEN` for a request the endpoint's authentication let through with its token. The
  authentication marks such a request with :func:`mark_request` (``request["monitor.actor"]``);
  an unmarked one is :data:`LOCAL`;
- the dashboards: what an identity resolver registered with :func:`set_dashboard_identity` returns,
  else the Streamlit user when Streamlit's own login is configured (``st.user``); else, where the
  dashboards require ``dashboard.auth_token``: the user an authenticating proxy names
  (:data:`PROXY_USER_HEADERS`) on a request it sent with the token, or :data:`DASHBOARD_TOKEN`
  (the login form, or the token without a user header); else :data:`LOCAL`;
- a command that opened the store itself (no ``monitor up`` running, or a ClickHouse server):
  :data:`LOCAL`, with the operating-system user in the entry's details (:func:`os_user`: what the
  process runs as, not a verified identity).
"""

from __future__ import annotations

import getpass
import logging
from typing import Any, Callable

__all__ = ["ADMIN_TOKEN", "DASHBOARD_TOKEN", "PROXY_USER_HEADERS", "LOCAL", "ACTOR_KEY", "mark_request", "admin_actor",
           "request_address", "set_dashboard_identity", "dashboard_actor", "dashboard_address", "os_user"]

log = logging.getLogger("monitor.audit")

ADMIN_TOKEN = "admin-token"
"""The actor of a request that carried the admin endpoint's token."""
LOCAL = "local"
"""No identity beyond being on this machine (loopback, or the store opened directly)."""
DASHBOARD_TOKEN = "dashboard-token"
"""The actor of a dashboard session that signed in with ``dashboard.auth_token``."""
PROXY_USER_HEADERS = ("x-forwarded-user", "x-forwarded-email", "x-auth-request-user", "x-auth-request-email",
                      "remote-user")
"""User headers of authenticating proxies (oauth2-proxy, Apache/nginx auth): believed only on a
request that also carries the dashboard token, i.e. one the proxy sent."""
ACTOR_KEY = "monitor.actor"
"""Where an authenticated admin request carries its actor (aiohttp request mapping)."""
MAX_ACTOR_CHARS = 200

_dashboard_identity: Callable[[], str | None] | None = None


def _clean(value: Any) -> str:
    text = "" if value is None else str(value)
    return "".join(c for c in text if c.isprintable())[:MAX_ACTOR_CHARS].strip()


def mark_request(request: Any, actor: str = ADMIN_TOKEN) -> None:
    """For the endpoint's authentication: this request proved ``actor`` (default: the token holder)."""
    request[ACTOR_KEY] = _clean(actor) or ADMIN_TOKEN


def admin_actor(request: Any) -> str:
    """The actor of an admin-endpoint request: the one its authentication marked, else
    :data:`ADMIN_TOKEN` when it carries a bearer token (the endpoint's guard lets no request with
    another token reach a handler), else :data:`LOCAL`."""
    try:
        actor = request.get(ACTOR_KEY)
    except AttributeError:
        actor = None
    if _clean(actor):
        return _clean(actor)
    auth = (getattr(request, "headers", None) or {}).get("Authorization", "")
    return ADMIN_TOKEN if auth.strip().lower().startswith("bearer ") else LOCAL


def request_address(request: Any) -> str:
    """The peer address of an aiohttp request (``""`` when unknown)."""
    return _clean(getattr(request, "remote", "") or "")


def set_dashboard_identity(resolver: Callable[[], str | None] | None) -> None:
    """Register how the dashboards learn who is logged in (called on each audited action, inside a
    page run; returns None or ``""`` when nobody is). ``None`` unregisters."""
    global _dashboard_identity
    _dashboard_identity = resolver


def dashboard_actor(token_required: bool = False) -> str:
    """The dashboard user of the current page run (see the module docstring). ``token_required``:
    the dashboards' gate lets no request through without ``dashboard.auth_token``."""
    if _dashboard_identity is not None:
        try:
            who = _clean(_dashboard_identity())
        except Exception:  # an identity resolver must not break a page; the entry says local
            log.exception("the dashboard identity resolver failed")
            who = ""
        if who:
            return who
    try:
        import streamlit as st
        user = st.user
        if user.get("is_logged_in"):
            who = _clean(user.get("email") or user.get("name") or user.get("sub"))
            if who:
                return who
    except Exception:  # no Streamlit login configured, or not inside a page run
        pass
    if token_required:
        try:
            import streamlit as st
            headers = {k.lower(): v for k, v in st.context.headers.items()}
        except Exception:
            headers = {}
        if headers.get("authorization", "").strip().lower().startswith("bearer "):
            for h in PROXY_USER_HEADERS:
                if _clean(headers.get(h)):
                    return _clean(headers[h])
        return DASHBOARD_TOKEN
    return LOCAL


def dashboard_address() -> str:
    """The browser's address as Streamlit saw it (``""`` outside a page run or when unknown)."""
    try:
        import streamlit as st
        return _clean(st.context.ip_address or "")
    except Exception:
        return ""


def os_user() -> str:
    try:
        return _clean(getpass.getuser())
    except Exception:  # no user name for this uid (a container)
        return ""
