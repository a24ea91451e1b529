"""Streamlit served from a background thread of this process.

``monitor up`` keeps the main thread for its signal handling (Ctrl-C stops the dashboard first,
then drains and flushes everything accepted, as before), so Streamlit's server runs on an event
loop of its own in a daemon thread. This is what ``streamlit.web.bootstrap.run`` does, minus
what only a process of its own may do: installing signal handlers, rewriting ``sys.argv``,
watching files. The pages read the process's store (:func:`monitor.webui.store.register`),
so inside ``monitor up`` they share the one chdb handle.

``monitor dashboard`` (:class:`monitor.runtime.apps.DashboardApp`) runs the same server over a
read-only store of its own.

Every request reaches Streamlit through :class:`monitor.webui.gate.Gate` (the token or login,
the Host check): the server refuses to start when it cannot put the gate in front. Behind the gate,
:class:`monitor.webui.bundle.BundleCache` answers for Streamlit's own bundle files from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from monitor.webui.store import register, unregister

__all__ = ["DashboardServer", "app_path"]

log = logging.getLogger("monitor.webui")


def app_path() -> Path:
    """dashboards/app.py in a source checkout (or editable install), else the copy in the wheel."""
    repo = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
    if repo.is_file():
        return repo
    return Path(str(resources.files("monitor") / "_dashboards" / "app.py"))


class DashboardServer:
    """Start/stop Streamlit's server (``streamlit.web.server.Server``) on a thread of its own.

    Streamlit allows one server per process (its ``Runtime`` is a singleton): start it once.
    """

    def __init__(self, host: str, port: int, store: Any, refresh_s: float = 10.0, token: str | None = None,
                 metrics: Any = None, prefetch_s: float = 900.0):
        from monitor.extras import require
        require("dashboards", "the dashboard app")
        self.token = token
        self.metrics = metrics
        self.host, self.port = host, port
        self.store = store
        self.refresh_s = refresh_s
        self.prefetch_s = prefetch_s
        self.audit_store: Any = None
        """Where the pages' audit entries go when not to ``store`` (``dashboard.audit_url``)."""
        self.url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> str:
        """Serve; returns the URL once Streamlit accepts connections. Raises OSError when the port
        is taken."""
        from streamlit import config as st_config

        pages = register(self.store, refresh_s=self.refresh_s, prefetch_s=self.prefetch_s)
        pages.prefetcher.metrics = self.metrics  # its counters on /metrics
        from monitor.webui import audit
        audit.register(self.audit_store or self.store, token=bool(self.token))
        for key, value in {
            "server.headless": True, "server.address": self.host, "server.port": self.port,
            "browser.gatherUsageStats": False, "server.fileWatcherType": "none", "server.runOnSave": False,
            "global.developmentMode": False, "client.toolbarMode": "viewer", "client.showErrorDetails": "type",
            "browser.serverAddress": self.host, "browser.serverPort": self.port,
            # dashboards/static: the chart library (monitor/webui/charts.py), served by this server
            "server.enableStaticServing": True,
        }.items():
            st_config.set_option(key, value)
        self._thread = threading.Thread(target=self._run, name="monitor-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the dashboard did not start within {timeout:.0f} s")
        if self._error is not None:
            err = self._error
            if isinstance(err, SystemExit):  # Streamlit exits when a manually set port is taken
                raise OSError(f"dashboard port {self.host}:{self.port} is not available "
                              "(--dashboard-port, or --no-dashboard)") from None
            raise OSError(f"the dashboard did not start: {err}") from err
        self.port = int(st_config.get_option("server.port"))  # the real one when 0 was asked for
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        self.url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{self.port}"
        return self.url

    def _run(self) -> None:
        from streamlit.web import bootstrap
        from streamlit.web.server import Server

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            server = Server(str(app_path()), False)
            with self._gated() as made:
                loop.run_until_complete(server.start())
            if not made:
                server.stop()
                loop.run_until_complete(server.stopped)
                raise OSError("Streamlit started without the monitor's access check in front; refusing to serve")
            bootstrap.prepare_streamlit_environment(str(app_path()))
            self._server = server
        except BaseException as exc:  # SystemExit included: Streamlit exits on a taken port
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(server.stopped)
        except Exception:
            log.exception("the dashboard server failed")
        finally:
            loop.close()

    @contextlib.contextmanager
    def _gated(self):
        """While Streamlit builds its app, wrap it in the gate (its uvicorn server makes the app with
        ``create_starlette_app``); fail closed when this Streamlit builds it some other way."""
        try:
            from streamlit.web.server.starlette import starlette_server
            original = starlette_server.create_starlette_app
        except (ImportError, AttributeError):
            raise OSError("this Streamlit version serves its pages in a way the monitor cannot put its "
                          "access check in front of (it needs Streamlit's Starlette server: upgrade streamlit)") from None
        from monitor.webui.bundle import BundleCache
        from monitor.webui.gate import Gate

        made: list[Gate] = []

        def gated(runtime):
            made.append(Gate(BundleCache(original(runtime)), self.token, self.host, self.metrics))
            return made[-1]

        starlette_server.create_starlette_app = gated
        try:
            yield made
        finally:
            starlette_server.create_starlette_app = original

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving (open sessions end; their queries finish first). Safe to call twice."""
        loop, server, thread = self._loop, self._server, self._thread
        if loop is not None and server is not None and thread is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(server.stop)
            except RuntimeError:  # the loop already closed
                pass
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the dashboard did not stop within %.0f s; leaving its daemon thread", timeout)
        self._server = None
        unregister()
        from monitor.webui import audit
        audit.unregister()
