"""Streamlit's own JavaScript, CSS and fonts from memory: an ASGI layer under the gate.

A first visit to a page fetches ~130 files of Streamlit's content-hashed bundle (``/static/js/...``,
``/static/css/...``, ``/static/media/...``: ~4.7 MB). Streamlit serves each through Starlette's
``StaticFiles`` (a stat, an open and reads in a worker thread, its middlewares): ~2 ms of this
process's CPU a file, ~0.25 s a first visit, on the cores the browser needs for the same load when
it runs on the same machine. The files never change while the process runs (their names carry
their hash), so the first answer for each is kept and replayed: the same status line, headers and
bytes Streamlit sent, byte for byte.

Only what is certainly a file of the bundle is kept: a plain ``GET`` (no range, no conditional
header, no query string) of a path that names a file under Streamlit's static directory, answered
200 in one piece without a content encoding or a cookie. Anything else goes to Streamlit as before. What is
kept is bounded by the bundle's files (~26 MB in all; a first visit to every page holds ~6 MB).
The gate (:mod:`monitor.webui.gate`) stays in front: nothing is served before it lets a request in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["BundleCache", "bundle_files"]

_PREFIX = "/static/"
_SKIP_HEADERS = (b"range", b"if-none-match", b"if-modified-since", b"if-range")
_PRIVATE_HEADERS = (b"content-encoding", b"set-cookie")
"""An answer carrying one of these is never kept: it was encoded for one client, or it holds a cookie."""


def bundle_files(static_dir: str | os.PathLike[str]) -> frozenset[str]:
    """The URL paths (``/static/...``) of the files of Streamlit's bundle under ``static_dir``."""
    root = Path(static_dir) / "static"
    out = set()
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            out.add(_PREFIX + rel)
    return frozenset(out)


class BundleCache:
    """ASGI middleware over Streamlit's app: replays its first answer for each bundle file (see the
    module docstring). ``files``: the paths it may keep (:func:`bundle_files`); default Streamlit's."""

    def __init__(self, app: Any, files: frozenset[str] | None = None):
        self.app = app
        if files is None:
            from streamlit import file_util

            files = bundle_files(file_util.get_static_dir())
        self.files = files
        self._kept: dict[str, tuple[int, list, bytes]] = {}
        """Path -> (status, headers, body) of Streamlit's first answer; written and read on the server's loop."""
        self.hits = 0

    async def __call__(self, scope: dict, receive, send) -> None:
        path = scope.get("path") or ""
        if (scope.get("type") != "http" or scope.get("method") != "GET" or not path.startswith(_PREFIX)
                or path not in self.files or scope.get("query_string")
                or any(k.lower() in _SKIP_HEADERS for k, _ in scope.get("headers") or ())):
            await self.app(scope, receive, send)
            return
        kept = self._kept.get(path)
        if kept is not None:
            self.hits += 1
            status, headers, body = kept
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.app(scope, receive, self._recorder(path, send))

    def _recorder(self, path: str, send):
        """``send`` that also keeps a 200 answer in one piece, without a content encoding or a cookie."""
        headers: list | None = None  # the answer's, while it may still be kept
        parts: list[bytes] = []

        async def recording(message: dict) -> None:
            nonlocal headers
            kind = message.get("type")
            if kind == "http.response.start":
                h = list(message.get("headers") or [])
                ok = message.get("status") == 200 and not any(k.lower() in _PRIVATE_HEADERS for k, _ in h)
                headers = h if ok else None
            elif kind == "http.response.body" and headers is not None:
                parts.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    body = b"".join(parts)
                    length = next((v for k, v in headers if k.lower() == b"content-length"), None)
                    if length is None or (length.isdigit() and int(length) == len(body)):
                        self._kept.setdefault(path, (200, headers, body))
            else:
                headers = None
            await send(message)

        return recording

    def kept_bytes(self) -> int:
        return sum(len(body) for _, _, body in self._kept.values())
