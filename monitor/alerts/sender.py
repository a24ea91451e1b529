"""One HTTP attempt of one notification: the :class:`Sender` protocol, its urllib implementation,
and how an answer is read (:func:`raise_for_status`, :func:`parse_retry_after`).

Like every other sender in the monitor, a channel's sender speaks the error tree
(:mod:`monitor.errors`): a delivery (2xx) returns a :class:`Response`; anything else raises

- :class:`NotDelivered` (a :class:`~monitor.errors.RetryableError`): 408, 429, 5xx, or no answer
  (a timeout, a refused connection, an answer that is not HTTP); its ``retry_after`` is the
  receiver's ``Retry-After`` of any form, parsed;
- :class:`Refused` (a :class:`~monitor.errors.PermanentError`): any other status (4xx, a redirect:
  URLs are never followed away from the config).

Whatever the receiver does (answers garbage, closes the connection, sends a ``Retry-After`` of
any form), :meth:`HttpSender.send` raises nothing else. It does not bound the attempt's total time
(urllib's timeout bounds the connect and each read, so a receiver that drips bytes can hold it):
the dispatcher runs each attempt under a deadline.
"""

from __future__ import annotations

import http.client
import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Protocol

from monitor.errors import PermanentError, RetryableError

__all__ = ["Response", "Sender", "HttpSender", "NotDelivered", "Refused", "raise_for_status", "parse_retry_after",
           "MAX_RETRY_AFTER_S"]

MAX_RETRY_AFTER_S = 365 * 86400.0
"""A longer ``Retry-After`` reads as this (the dispatcher caps it at ``alerts.retry.max_s`` anyway);
it keeps every hint a finite number a datetime can be shifted by."""

_DIGITS = re.compile(r"\d+")


@dataclass
class Response:
    """An answer: a delivery when :meth:`Sender.send` returns it (any other answer is raised as
    :class:`NotDelivered` or :class:`Refused`; :func:`raise_for_status` turns one into that)."""

    status: int | None
    """HTTP status, None when no response came (timeout, refused connection, not HTTP)."""
    error: str = ""
    retry_after: float | None = None
    """Seconds the receiver asked us to wait: finite, in [0, MAX_RETRY_AFTER_S], or None."""


class NotDelivered(RetryableError):
    """Not delivered this time (408, 429, 5xx, no answer); ``retry_after``: the receiver's hint."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message, retry_after)
        self.status = status


class Refused(PermanentError):
    """Refused for good (a 4xx other than 408 and 429, a redirect): retrying the same notification
    cannot help."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Sender(Protocol):
    def send(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        """POST ``body``: the :class:`Response` of a delivery, or raise :class:`NotDelivered` /
        :class:`Refused` (any RetryableError / PermanentError is read the same way)."""
        ...


def raise_for_status(resp: Response) -> Response:
    """``resp`` if it is a delivery (2xx); else :class:`NotDelivered` for no answer, 408, 429 and
    5xx, :class:`Refused` for any other status."""
    status = resp.status
    if status is not None and 200 <= status < 300:
        return resp
    error = resp.error or (f"HTTP {status}" if status is not None else "no answer")
    if status is None or status in (408, 429) or status >= 500:
        raise NotDelivered(error, status, resp.retry_after)
    raise Refused(error, status)


def parse_retry_after(value: str | float | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (or a number of seconds), or None when there is no
    usable hint.

    Delay-seconds (``120``) and HTTP-dates are the standard forms; a decimal or exponent number
    (``1.5``, ``1e12``) is read too. Negative values and past dates are 0; anything over
    :data:`MAX_RETRY_AFTER_S` (``1e12``, a date in the year 9999, 400 digits) is that ceiling;
    garbage, ``nan`` and ``inf`` are None. Never raises.

    >>> parse_retry_after("120"), parse_retry_after("-5"), parse_retry_after("soon")
    (120.0, 0.0, None)
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        value = str(value) if isinstance(value, int) else repr(float(value))
    text = str(value).strip()
    if not text:
        return None
    if _DIGITS.fullmatch(text):
        # int() of any length is exact; only compare it, never turn a huge one into a float
        n = int(text) if len(text) <= 20 else None
        return MAX_RETRY_AFTER_S if n is None or n > MAX_RETRY_AFTER_S else float(n)
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is None:
        try:
            when = parsedate_to_datetime(text)
            if when.tzinfo is None:  # RFC 9110 dates are GMT
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None  # a 3xx comes back as an HTTPError: the configured URL is the only one used


class HttpSender:
    """POST with urllib; the timeout bounds the connect and each read. Raises only
    :class:`NotDelivered` and :class:`Refused`."""

    def __init__(self):
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=timeout) as r:
                r.read(65536)
                return Response(r.status)
        except urllib.error.HTTPError as exc:
            try:
                text = exc.read(300).decode("utf-8", "replace").strip() if exc.fp else ""
            except (OSError, http.client.HTTPException):
                text = ""
            answer = Response(exc.code, f"HTTP {exc.code}{': ' + text if text else ''}",
                              parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None))
        except TimeoutError:
            raise NotDelivered(f"timed out after {timeout:g}s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise NotDelivered(f"timed out after {timeout:g}s") from None
            raise NotDelivered(f"connection failed: {reason}") from None
        except OSError as exc:
            raise NotDelivered(f"connection failed: {exc}") from None
        except http.client.HTTPException as exc:  # not HTTP at all, or a malformed status line / headers
            raise NotDelivered(f"bad response: {type(exc).__name__}: {str(exc)[:200]}") from None
        except ValueError as exc:  # e.g. a header value urllib refuses to send
            raise NotDelivered(f"request not sent: {exc}") from None
        raise_for_status(answer)  # an HTTPError is never a 2xx: this raises
        return answer
