"""How capture records leave the proxy process: length-prefixed frames over a Unix socket.

A frame is a 4-byte little-endian length, then that many bytes of payload
(:func:`monitor.sidecar.proxy.record.encode` or ``encode_start``). The proxy's
:class:`RecordSender` never blocks its event loop: frames go into a bounded
buffer that the socket drains; when the buffer is full or the socket is down
a frame is dropped and counted, and the request it describes has long been
served. The pipeline's :class:`RecordReceiver` accepts any number of senders
(one per proxy worker process); a sender that writes garbage loses its
connection, never the receiver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import struct
import time
from typing import Any, Callable

from monitor.backoff import Backoff
from monitor.sidecar.proxy import record as _record
from monitor.sidecar.proxy.record import CaptureRecord, decode, encode

__all__ = ["RecordSender", "RecordReceiver", "MAX_FRAME_BYTES", "DEFAULT_BUFFER_BYTES"]

log = logging.getLogger("monitor.proxy")

MAX_FRAME_BYTES = 256 * 1024 * 1024
"""Frames larger than this are refused by both ends (the receiver closes the connection)."""
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024
_LEN = struct.Struct("<I")


class _SenderProtocol(asyncio.Protocol):
    def __init__(self, lost: asyncio.Future) -> None:
        self.lost = lost

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class RecordSender:
    """The proxy's end: ``send(record)`` from the event loop it was started on.

    ``max_buffer_bytes`` bounds the frames waiting for the socket (this
    sender's own list plus the transport's buffer). While the socket is down
    nothing is buffered: ``send`` returns False. It reconnects with backoff
    (:class:`~monitor.backoff.Backoff`: ``backoff_initial_s`` doubling up to
    ``backoff_max_s``, jittered; reset once connected; ``close`` ends the wait).
    """

    def __init__(self, path: str, max_buffer_bytes: int = DEFAULT_BUFFER_BYTES, *,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 2.0) -> None:
        if max_buffer_bytes <= 0:
            raise ValueError("max_buffer_bytes must be positive")
        self.path = path
        self.max_buffer_bytes = max_buffer_bytes
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False
        self._closing = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._down_logged_at = -1e18
        self.sent = 0
        """Frames handed to the socket."""
        self.dropped = 0
        """Frames refused: buffer full, socket down, or too large."""
        self.disconnects = 0

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def start(self) -> None:
        """Begin connecting (in the background: the receiver may come up later)."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            return False
        return True

    def send(self, record: CaptureRecord) -> bool:
        """Queue one record; False (counted in :attr:`dropped`) when it was dropped. Never blocks."""
        return self._queue(encode(record))

    def send_start(self, trace_id: bytes, span_id: bytes) -> bool:
        """Queue a :class:`~monitor.sidecar.proxy.record.CaptureStart` (25 bytes)."""
        return self._queue(_record.encode_start(trace_id, span_id))

    def _queue(self, payload: bytes) -> bool:
        t = self._transport
        n = len(payload)
        if t is None or self._closing or n > MAX_FRAME_BYTES or \
                self._pending_bytes + t.get_write_buffer_size() + n + 4 > self.max_buffer_bytes:
            self.dropped += 1
            return False
        self._pending.append(_LEN.pack(n))
        self._pending.append(payload)
        self._pending_bytes += n + 4
        if not self._flush_scheduled:  # one write per loop iteration, however many frames
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        t = self._transport
        if t is None:
            self.dropped += len(pending) // 2
            return
        t.writelines(pending)
        self.sent += len(pending) // 2

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            lost: asyncio.Future = loop.create_future()
            try:
                transport, _ = await loop.create_unix_connection(lambda: _SenderProtocol(lost), self.path)
            except OSError as exc:
                now = time.monotonic()
                if now - self._down_logged_at > 60:
                    self._down_logged_at = now
                    log.warning("capture socket %s: %s; records are dropped until it is back", self.path, exc)
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            self._transport = transport  # type: ignore[assignment]
            self._connected.set()
            try:
                await lost
            finally:
                self._transport = None
                self._connected.clear()
            if not self._closing:
                self.disconnects += 1
                log.warning("capture socket %s closed; reconnecting (frames it held are lost)", self.path)

    async def close(self, timeout: float) -> None:
        """Send what is buffered for up to ``timeout`` seconds, then close. Later sends return False."""
        self._closing = True
        self._flush()
        t = self._transport
        deadline = time.monotonic() + timeout
        while t is not None and not t.is_closing() and t.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if t is not None:
            t.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def stats(self) -> dict[str, Any]:
        t = self._transport
        return {"connected": t is not None, "sent": self.sent, "dropped": self.dropped,
                "disconnects": self.disconnects,
                "buffered_bytes": self._pending_bytes + (t.get_write_buffer_size() if t is not None else 0)}


class _ReceiverProtocol(asyncio.Protocol):
    def __init__(self, owner: "RecordReceiver") -> None:
        self.owner = owner
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._conns.discard(self)
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        owner = self.owner
        pos, size = 0, len(buf)
        with memoryview(buf) as view:
            while size - pos >= 4:
                (n,) = _LEN.unpack_from(view, pos)
                if n > owner.max_frame_bytes:
                    self._bad(f"a frame of {n} bytes (limit {owner.max_frame_bytes})")
                    return
                if size - pos - 4 < n:
                    break
                try:
                    item = decode(view[pos + 4:pos + 4 + n])
                except Exception as exc:  # noqa: BLE001 -- any undecodable frame is the sender's fault
                    self._bad(f"an undecodable frame ({exc})")
                    return
                pos += 4 + n
                owner.frames += 1
                try:
                    owner.on_record(item)
                except Exception:
                    owner.callback_errors += 1
                    log.exception("capture receiver: on_record failed; the record is lost")
        if pos:
            del buf[:pos]

    def _bad(self, what: str) -> None:
        self.owner.bad_frames += 1
        log.warning("capture socket %s: %s; closing that sender's connection", self.owner.path, what)
        self.buf = bytearray()
        if self.transport is not None:
            self.transport.abort()


class RecordReceiver:
    """The pipeline's end: ``on_record(item)`` on the event loop for every frame, in order per sender
    (items are :class:`CaptureRecord`, or whatever else :func:`decode` returns)."""

    def __init__(self, path: str, on_record: Callable[[Any], None],
                 max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.path = path
        self.on_record = on_record
        self.max_frame_bytes = max_frame_bytes
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[_ReceiverProtocol] = set()
        self.frames = self.bad_frames = self.callback_errors = 0

    async def start(self) -> None:
        """Listen on the socket path (a stale socket left by a killed process is replaced; the socket
        is made owner-only: records carry prompts)."""
        try:
            if stat.S_ISSOCK(os.stat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _ReceiverProtocol(self), self.path)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening and close every sender's connection. Safe to call more than once."""
        if self._server is not None:
            self._server.close()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        for c in list(self._conns):
            if c.transport is not None:
                c.transport.close()
        self._conns.clear()

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self._conns), "frames": self.frames, "bad_frames": self.bad_frames,
                "callback_errors": self.callback_errors}
