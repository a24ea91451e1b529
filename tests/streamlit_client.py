"""A page view without a browser: Streamlit's own websocket protocol, as its frontend speaks it.

Connect to ``/_stcore/stream`` (subprotocol ``streamlit``), ask for a run of one page
(``BackMsg.rerun_script`` with the page's URL path and query string) and read the server's
messages until it says the run finished. Enough to make the server run a page as a browser would
(a new session per view), at a fraction of a browser's CPU: the dashboard memory tests use it for
hundreds of page views.
"""

from __future__ import annotations

import time

__all__ = ["view"]


def view(base_url: str, page: str = "", query: str = "", timeout: float = 60.0) -> dict:
    """One page view of ``page`` (its URL path: ``""`` for the default page, ``"alerts"``...) in a new
    session. Returns what the run produced: ``deltas`` (element messages), ``exceptions`` (texts of
    exceptions shown), ``status`` (the script_finished status), ``seconds``."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    ws_url = base_url.replace("http://", "ws://", 1).rstrip("/") + "/_stcore/stream"
    msg = BackMsg()
    msg.rerun_script.query_string = query
    msg.rerun_script.page_name = page
    msg.rerun_script.context_info.timezone = "UTC"
    out = {"deltas": 0, "exceptions": [], "status": None, "seconds": 0.0}
    t = time.monotonic()
    with connect(ws_url, subprotocols=["streamlit"], origin=base_url.rstrip("/"), open_timeout=timeout,
                 max_size=2**26) as ws:
        ws.send(msg.SerializeToString())
        deadline = t + timeout
        while time.monotonic() < deadline:
            fm = ForwardMsg()
            fm.ParseFromString(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            kind = fm.WhichOneof("type")
            if kind == "delta":
                out["deltas"] += 1
                d = fm.delta
                if d.WhichOneof("type") == "new_element" and d.new_element.WhichOneof("type") == "exception":
                    out["exceptions"].append(d.new_element.exception.message)
            elif kind == "script_finished":
                out["status"] = ForwardMsg.ScriptFinishedStatus.Name(fm.script_finished)
                break
        else:
            raise TimeoutError(f"page {page!r} did not finish within {timeout:.0f} s")
    out["seconds"] = time.monotonic() - t
    return out
