"""Who may talk to the monitor's ports: the primitives every listener applies (no servers here).

The policy (README "Security"):

- Every listener binds loopback by default. One bound anywhere else must authenticate its callers
  (a bearer token, or client certificates for the OTLP receiver), or the command refuses to start
  and says which setting to add (:func:`check_exposure`).
- Tokens are compared in constant time (:func:`bearer_ok`). A credential in a query string is
  refused, whether it is right or wrong (:func:`query_has_credential`): URLs end up in access
  logs, shell and browser histories and ``Referer`` headers.
- A listener that takes requests without a token (loopback only, by the rule above) accepts only
  ``Host`` headers that DNS rebinding cannot produce (:func:`host_allowed`), so a web page the
  operator merely opens cannot reach it under a name of its own.
- Secrets are never written to logs, metrics or rows: :func:`scrub` takes them out of texts that
  may echo them (an error from a webhook receiver, a library's exception).

Bearer tokens are static: a captured request can be replayed by whoever captured it. On loopback
only a local process can capture one, and TLS (``receiver.tls``) keeps them off the wire elsewhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import ssl
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError

__all__ = ["Listener", "listeners", "check_exposure", "secret_value", "is_loopback", "bearer_ok",
           "query_has_credential", "host_allowed", "host_names_bind", "new_token", "write_token_file", "read_token_file",
           "server_ssl_context", "scrub", "CREDENTIAL_PARAMS", "REDACTED"]

REDACTED = "[REDACTED]"

CREDENTIAL_PARAMS = frozenset({
    "token", "access_token", "id_token", "auth", "authorization", "bearer", "api_key", "apikey", "api-key",
    "x-api-key", "key", "password", "passwd", "secret", "session"})
"""Query parameters refused wherever they appear (lower-cased names): a credential does not belong
in a URL, so one sent there is refused rather than checked."""


def secret_value(value: Any) -> str | None:
    """The text of a token setting (``SecretStr``, ``str`` or ``None``); an empty one is ``None``."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a listener on this machine: 127.0.0.0/8, ::1, ``localhost``.
    ``0.0.0.0``, ``::``, an empty host and any other name are not."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (the scheme in any case),
    compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def query_has_credential(params: Iterable[tuple[str, str]], token: str | None = None) -> bool:
    """Whether a query string carries a credential: a parameter named like one
    (:data:`CREDENTIAL_PARAMS`) or any value containing ``token``."""
    for name, value in params:
        if name.strip().lower() in CREDENTIAL_PARAMS:
            return True
        if token and token in value:
            return True
    return False


def _hostname(host_header: str) -> str | None:
    """The host part of a ``Host`` header (``[::1]:9466`` -> ``::1``), lower-cased; None when it is
    not a plain host[:port]."""
    h = host_header.strip().lower()
    if not h or any(c in h for c in "@/\\ ?#%"):
        return None
    if h.startswith("["):
        end = h.find("]")
        rest = h[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return h[1:end]
    if h.count(":") == 1:
        h, _, port = h.partition(":")
        if not port.isdigit():
            return None
    elif h.count(":") > 1:
        return None  # an IPv6 literal must be bracketed in Host
    return h.rstrip(".")


def host_allowed(host_header: str | None, bind_host: str, also: Iterable[str] = ()) -> bool:
    """Whether a request's ``Host`` is one DNS rebinding cannot produce: an IP literal,
    ``localhost`` (and ``*.localhost``, which browsers resolve themselves), the name the listener
    was bound to, this machine's own name, or one of ``also``. A rebinding page reaches the port
    under a DNS name of its own, which is none of these. No ``Host`` at all (``None``) passes:
    browsers always send one, so such a request is no rebinding page's."""
    if host_header is None:
        return True
    name = _hostname(host_header)
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost"):
        return True
    allowed = {bind_host.strip().strip("[]").rstrip(".").lower(), *(a.lower().rstrip(".") for a in also)}
    try:
        allowed.add(socket.gethostname().lower())
    except OSError:
        pass
    return name in allowed


def host_names_bind(host_header: str | None, bind_host: str) -> bool:
    """The strict form of :func:`host_allowed`: ``Host`` must name the address the listener is
    bound to (for a loopback bind: any loopback address or ``localhost``; for a wildcard bind: an
    IP address or ``localhost``). A missing ``Host`` fails."""
    name = _hostname(host_header) if host_header else None
    if not name:
        return False
    bind = bind_host.strip().strip("[]").rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if bind in ("", "0.0.0.0", "::"):
        return ip is not None or name == "localhost"
    if is_loopback(bind):
        return name == "localhost" or (ip is not None and ip.is_loopback)
    return name == bind


@dataclass(frozen=True)
class Listener:
    """One port a command opens, and how its callers are authenticated."""

    what: str
    host: str
    authenticated: bool
    fix: str
    """The setting that authenticates it (said when it is exposed without)."""


def _env(key: str) -> str:
    return "MONITOR_" + key.upper().replace(".", "__")


def listeners(settings: Any, *, receiver: bool = False, proxy: bool = False, dashboard: bool = False,
              metrics: bool = True) -> list[Listener]:
    """The listeners a command opens, from its settings (``monitor.config.Settings``). The admin
    endpoint is not among them: it always requires its token."""
    out: list[Listener] = []
    if receiver and (settings.receiver.grpc_enabled or settings.receiver.http_enabled):
        r = settings.receiver
        mtls = r.tls.client_ca_file is not None
        out.append(Listener("the OTLP receiver", r.host, secret_value(r.auth_token) is not None or mtls,
                            f"receiver.auth_token (env {_env('receiver.auth_token')}) or receiver.tls.client_ca_file"))
    if proxy and settings.proxy.upstream:
        out.append(Listener("the capture proxy", settings.proxy.host, secret_value(settings.proxy.auth_token)
                            is not None, f"proxy.auth_token (env {_env('proxy.auth_token')})"))
    if dashboard:
        d = settings.dashboard
        out.append(Listener("the dashboards", d.host, secret_value(d.auth_token) is not None,
                            f"dashboard.auth_token (env {_env('dashboard.auth_token')})"))
    if metrics:
        t = settings.telemetry
        out.append(Listener("/metrics", t.metrics_host, secret_value(t.auth_token) is not None,
                            f"telemetry.auth_token (env {_env('telemetry.auth_token')})"))
    return out


def check_exposure(found: Iterable[Listener]) -> None:
    """Raise :class:`ConfigError` naming every listener bound off loopback without authentication
    and the setting that fixes it."""
    bad = [x for x in found if not x.authenticated and not is_loopback(x.host)]
    if bad:
        lines = [f"  {x.what} binds {x.host or '(all addresses)'} without authentication: set {x.fix}, "
                 "or bind it to 127.0.0.1" for x in bad]
        raise ConfigError("refusing to expose an unauthenticated port beyond this machine:\n" + "\n".join(lines)
                          + "\n(a token: a long random string, e.g. `openssl rand -hex 32`; README \"Security\")")


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def write_token_file(path: Path, token: str) -> None:
    """Write ``token`` to ``path``, readable by its owner only (0600; its directory created 0700),
    replacing any file there atomically: never a moment where another user could read it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_token_file(path: Path) -> str | None:
    """The token in ``path``, None when there is no such file. Raises :class:`ConfigError` when the
    file is readable by anyone but its owner, or owned by another user (a token others could read
    or plant is not one to send)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"the token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                              "it is not used. Remove it (a new one is written at the next start) or chmod 600 it")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise ConfigError(f"the token file {path} belongs to another user; it is not used")
        text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    return text or None


def server_ssl_context(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+) from PEM files; with ``client_ca_file`` clients must present
    a certificate that CA signed. Raises :class:`ConfigError` naming the file that could not be used."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert_file} with key {key_file}: {exc}") from None
    if client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client CA {client_ca_file}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def scrub(text: str, secret_values: Iterable[Any]) -> str:
    """``text`` with every secret in ``secret_values`` (strings or ``SecretStr``; short or empty
    ones skipped) replaced by ``[REDACTED]``."""
    for s in secret_values:
        v = secret_value(s)
        if v and len(v) >= 4 and v in text:
            text = text.replace(v, REDACTED)
    return text
