"""Streams whose large reads land straight in the caller's buffer.

asyncio's streams copy every received byte three times on the way to a frame: the transport
hands a fresh ``bytes`` to the protocol, the reader appends it to its buffer, and ``readexactly``
copies it out again (and the caller joins the pieces). Here the protocol is a
:class:`asyncio.BufferedProtocol`: while a caller waits in :meth:`DirectReader.readinto_exactly`,
the transport (TLS included: it decrypts into the buffer it is given) writes the bytes directly
into the caller's array. Everything else (headers, handshakes, small frames) goes through the
ordinary :class:`asyncio.StreamReader` buffer, so the class is a drop-in stream reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

SCRATCH = 1 << 18  # where bytes go while no direct read is waiting
WAKE_EVERY = 1 << 22  # a direct read reports progress (for round timeouts) every this many bytes


class DirectReader(asyncio.StreamReader):
    """A :class:`asyncio.StreamReader` that can also read into a given buffer without copies."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._target: memoryview | None = None
        self._filled = 0
        self._reported = 0

    def direct_buffer(self) -> memoryview | None:
        """The unfilled rest of the waiting direct read, if any (the protocol's ``get_buffer``)."""
        if self._target is None or self._filled >= len(self._target):
            return None
        return self._target[self._filled :]

    def feed_direct(self, nbytes: int) -> None:
        """``nbytes`` more were written into :meth:`direct_buffer`."""
        self._filled += nbytes
        assert self._target is not None and self._filled <= len(self._target)
        if self._filled == len(self._target) or self._filled - self._reported >= WAKE_EVERY:
            self._reported = self._filled
            self._wakeup_waiter()

    async def readinto_exactly(self, view: memoryview, progress: Callable[[], None] | None = None) -> None:
        """Fill ``view`` (a writable byte view) from the stream; ``progress`` is called as bytes
        arrive. Raises :class:`asyncio.IncompleteReadError` if the stream ends first."""
        n = len(view)
        if self._exception is not None:
            raise self._exception
        k = min(len(self._buffer), n)
        if k:
            with memoryview(self._buffer) as buf:
                view[:k] = buf[:k]
            del self._buffer[:k]
            self._maybe_resume_transport()
        if k == n:
            return
        self._target, self._filled, self._reported = view, k, k
        try:
            while self._filled < n:
                if self._exception is not None:
                    raise self._exception
                if self._eof:
                    raise asyncio.IncompleteReadError(bytes(view[: self._filled]), n)
                await self._wait_for_data("readinto_exactly")
                if progress is not None:
                    progress()
        finally:
            self._target = None


class DirectProtocol(asyncio.BufferedProtocol):
    """The stream protocol of a :class:`DirectReader`: the transport asks it where to write.

    It plays :class:`asyncio.StreamReaderProtocol`'s part for :class:`asyncio.StreamWriter`
    (write flow control, ``drain``, close waiter). It must not derive from
    :class:`asyncio.Protocol`: uvloop then ignores ``get_buffer`` and copies as before."""

    def __init__(self, reader: DirectReader, loop: asyncio.AbstractEventLoop) -> None:
        self._reader = reader
        self._loop = loop
        # a memoryview, not the bytearray: asyncio's TLS reader slices what it gets to continue
        # a partial read, and a bytearray's slice is a copy (the bytes would be lost)
        self._scratch = memoryview(bytearray(SCRATCH))
        self._direct = False
        self._over_ssl = False
        self._paused = False
        self._lost = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] = loop.create_future()

    # reading
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._reader.set_transport(transport)  # type: ignore[arg-type]
        self._over_ssl = transport.get_extra_info("sslcontext") is not None

    def get_buffer(self, sizehint: int) -> memoryview:
        target = self._reader.direct_buffer()
        self._direct = target is not None
        return target if target is not None else self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            self._reader.feed_direct(nbytes)
        else:
            self._reader.feed_data(self._scratch[:nbytes])  # type: ignore[arg-type]

    def eof_received(self) -> bool:
        self._reader.feed_eof()
        return not self._over_ssl  # TLS has no half-close: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if exc is None:
            self._reader.feed_eof()
        else:
            self._reader.set_exception(exc)
        for w in self._drain_waiters:
            if w.done():
                continue
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)
        if self._closed.done():
            return
        if exc is None:
            self._closed.set_result(None)
        else:
            self._closed.set_exception(exc)
            self._closed.exception()  # marked retrieved: nobody has to wait for the close

    # writing (what StreamWriter asks of its protocol)
    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)

    async def _drain_helper(self) -> None:
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


def direct_streams(loop: asyncio.AbstractEventLoop, limit: int) -> tuple[DirectReader, DirectProtocol]:
    """A reader and its protocol: hand ``lambda: proto`` to ``create_connection`` or
    ``connect_accepted_socket``, then ``asyncio.StreamWriter(transport, proto, reader, loop)``."""
    reader = DirectReader(limit, loop)
    return reader, DirectProtocol(reader, loop)
