"""The link to one peer: framed, counted, shaped. Knows frames and peers, nothing about protocols.

One :class:`Link` per peer (connections are made by :mod:`secformer.mesh`). Messages are queued
with :meth:`Link.send`; everything queued to one peer in the same event-loop tick leaves as one
frame (one round = one frame). Incoming messages are matched to :meth:`Link.recv` calls by key,
never by arrival order.
Network shaping (:mod:`netsim`) delays each frame's write by its simulated arrival time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netsim import Profile, Shaper
from secformer import wire
from secformer.errors import FrameError, PeerError
from secformer.streams import DirectReader
from secformer.tls import describe

log = logging.getLogger("secformer.link")

PARTY_NAMES = {0: "P0", 1: "P1", 2: "dealer"}
STREAM_LIMIT = 1 << 26  # large reads without pausing the transport every megabyte
DIRECT_READ = 1 << 16  # frames above this size are read straight into their buffer (streams.py)
# Messages that arrive before anyone asked for them (the peer runs ahead, or P1 prefetches dealer
# material) are held until received. An honest peer is at most a round ahead; a round is at most
# the model's opened weights, sent in frames of at most max_frame. Beyond these bounds the link
# fails (a flood, not a protocol).
MAX_UNSOLICITED_KEYS = 1 << 20
MAX_UNSOLICITED_FRAMES = 4  # bytes held: at most this many max_frame
SHAPE_CHUNK = 1 << 20  # shaped links deliver large frames progressively, at the link's bandwidth
# A frame given to TLS whole is encrypted whole into a buffer as large as the frame, then copied
# again on its way to the socket; chunks keep both buffers small (2x throughput at 64 MB frames).
TLS_CHUNK = 1 << 20


def party_name(pid: int) -> str:
    return PARTY_NAMES.get(pid, f"party {pid}")


@dataclass
class LinkStats:
    """Traffic on one link, as seen by this end."""

    bytes_sent: int = 0
    frames_sent: int = 0
    messages_sent: int = 0
    bytes_recv: int = 0
    frames_recv: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Outbox:
    messages: list[tuple[str, list[np.ndarray], Any]] = field(default_factory=list)
    scheduled: bool = False


class Link:
    """A framed, shaped, counted connection to one peer."""

    def __init__(
        self,
        reader: DirectReader,
        writer: asyncio.StreamWriter,
        me: int,
        peer: int,
        session: str,
        profile: Profile | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.me, self.peer, self.session = me, peer, session
        self.max_frame = max_frame
        self.stats = LinkStats()
        self.shaper = Shaper(profile) if profile is not None and profile.shaped else None
        self._tls = writer.get_extra_info("ssl_object") is not None
        self._outbox = _Outbox()
        self._wire: asyncio.Queue[tuple[float, list[bytes | memoryview]] | None] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[tuple[list[np.ndarray], Any]]] = {}
        self._held: dict[str, int] = {}  # unsolicited messages waiting for their recv: payload bytes
        self._held_bytes = 0
        self._seen: set[str] = set()
        self._error: BaseException | None = None
        self._closed = False
        self._peer_said_bye = False
        self._ended: PeerError | None = None
        self.bye_reason = ""  # the peer said bye and closed: nothing more will come
        self.on_failure: Callable[[BaseException], None] | None = None
        self.on_message: Callable[[str, list[np.ndarray], Any], bool] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.last_rx = asyncio.get_running_loop().time()  # last time any bytes arrived
        self._closing = False
        self.done = asyncio.Event()  # set when the peer has closed or the link failed
        self.finished = asyncio.Event()  # the peer said bye, closed, or the link failed

    @property
    def name(self) -> str:
        return f"{party_name(self.me)}->{party_name(self.peer)}"

    @property
    def security(self) -> str:
        """'TLSv1.3 <cipher>' or 'plaintext TCP'."""
        return describe(self.writer.get_extra_info("ssl_object"))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_loop(), name=f"read {self.name}"),
            loop.create_task(self._write_loop(), name=f"write {self.name}"),
        ]

    async def send_hello(self, info: dict[str, Any]) -> None:
        data = wire.encode_frame("hello", self.session, self.me, info=info)
        self.writer.write(data)
        await self.writer.drain()

    async def read_hello(self, timeout: float) -> dict[str, Any]:
        """Read the peer's hello (before :meth:`start`); raises on anything else."""
        try:
            frame = await asyncio.wait_for(self._read_frame(), timeout)
        except TimeoutError:
            raise PeerError(f"{party_name(self.peer)} sent no handshake within {timeout:g} s") from None
        except (ssl.SSLError, ConnectionError) as exc:
            raise PeerError(
                f"{party_name(self.peer)} refused the TLS connection ({type(exc).__name__}: {exc}); "
                "is our certificate from this cluster's CA?"
            ) from None
        if frame is None:
            hint = ""
            if self.writer.get_extra_info("ssl_object") is not None:
                hint = " (a TLS peer does this when it refuses our certificate: is it from this cluster's CA?)"
            raise PeerError(f"{party_name(self.peer)} closed the connection during the handshake{hint}")
        if frame.type == "abort":
            raise PeerError(f"{party_name(frame.sender)} refused the handshake: {frame.reason}")
        if frame.type != "hello":
            raise FrameError(f"expected a hello frame, got {frame.type!r}")
        if frame.sender != self.peer:
            raise FrameError(f"connection claims to be {party_name(frame.sender)}, expected {party_name(self.peer)}")
        if frame.session != self.session:
            raise FrameError(f"{party_name(self.peer)} is in session {frame.session!r}, we are in {self.session!r}")
        return frame.info

    async def close(self, linger: float = 10.0, reason: str = "") -> None:
        """Flush queued frames, say bye (with ``reason``, if any, for the peer's next error
        message), wait for the peer's bye (or end), close.

        Waiting for the peer's bye before closing avoids a TCP reset that could destroy data
        still in flight (TLS cannot half-close, so bye, not EOF, is the signal); errors after
        this point are not failures of the session.
        """
        if self._closed:
            return
        self._closing = True
        if self._error is None:
            with contextlib.suppress(Exception):
                self._flush()
                bye = wire.encode_frame("bye", self.session, self.me, reason=reason[:2000])
                self._wire.put_nowait((self._arrival(0), [bye]))
        self._wire.put_nowait(None)
        writer_task = self._tasks[1] if len(self._tasks) > 1 else None
        with contextlib.suppress(Exception, asyncio.CancelledError):
            if writer_task is not None:
                await asyncio.wait_for(asyncio.shield(writer_task), linger + self._pending_delay())
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self.finished.wait(), linger)
        self._closed = True
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()
        self._fail_waiters(PeerError(f"link {self.name} closed"))

    def abort(self, reason: str) -> None:
        """Tell the peer we abort (best effort, immediately, unshaped) and close."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.writer.write(wire.encode_frame("abort", self.session, self.me, reason=reason[:2000]))
        self._closed = True
        for t in self._tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()
        self._fail_waiters(PeerError(f"link {self.name} aborted: {reason}"))
        self.done.set()
        self.finished.set()

    # ------------------------------------------------------------------ sending
    def send(self, key: str, arrays: list[np.ndarray], meta: Any = None) -> None:
        """Queue a message; all messages queued in this loop tick go out as one frame."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise PeerError(f"link {self.name} is closed")
        if self._ended is not None:
            raise self._ended
        self._outbox.messages.append((key, arrays, meta))
        self.stats.messages_sent += 1
        if not self._outbox.scheduled:
            self._outbox.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def busy(self) -> None:
        """Tell the peer we are alive though we send nothing (e.g. during an offline phase that
        outlasts its round timeout). Goes out in order behind frames already queued."""
        if self._error is None and not self._closed:
            self._flush()
            self._wire.put_nowait((self._arrival(0), [wire.encode_frame("busy", self.session, self.me)]))

    def _flush(self) -> None:
        box, self._outbox = self._outbox, _Outbox()
        if not box.messages or self._closed:
            return
        # one frame per tick, split only where it would exceed max_frame (e.g. a model's weights)
        groups: list[list[tuple[str, list[np.ndarray], Any]]] = [[]]
        size = 0
        budget = self.max_frame - min(1 << 20, self.max_frame // 4)  # room for the meta
        for m in box.messages:
            n = sum(a.nbytes for a in m[1])
            if groups[-1] and size + n > budget:
                groups.append([])
                size = 0
            groups[-1].append(m)
            size += n
        for group in groups:
            try:
                parts = wire.encode_frame_parts("data", self.session, self.me, messages=group, max_frame=self.max_frame)
            except Exception as exc:  # a single oversize message or bad dtype: a bug or misconfiguration
                self._set_error(exc)
                return
            nbytes = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
            self.stats.bytes_sent += nbytes
            self.stats.frames_sent += 1
            if log.isEnabledFor(logging.DEBUG):  # keys and sizes only
                log.debug(
                    "%s frame %d: %d messages (%s..%s), %d bytes",
                    self.name,
                    self.stats.frames_sent,
                    len(group),
                    group[0][0],
                    group[-1][0],
                    nbytes,
                )
            self._wire.put_nowait((self._arrival(nbytes), parts))

    def _arrival(self, nbytes: int) -> float:
        now = asyncio.get_running_loop().time()
        return self.shaper.arrival(now, nbytes) if self.shaper else now

    def _pending_delay(self) -> float:
        if self.shaper is None:
            return 0.0
        return max(0.0, self.shaper._last_arrival - asyncio.get_running_loop().time())

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await self._wire.get()
                if item is None:
                    await self.writer.drain()
                    return
                at, parts = item
                if self.shaper is not None and self.shaper.profile.bandwidth > 0:
                    await self._write_shaped(at, parts)
                    continue
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._tls:  # TLS encrypts what it is given at once: hand it a chunk at a time
                    for p in parts:
                        view = memoryview(p).cast("B")
                        for off in range(0, len(view), TLS_CHUNK):
                            self.writer.write(view[off : off + TLS_CHUNK])
                            await self.writer.drain()
                else:
                    self.writer.writelines(parts)
                    await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._set_error(PeerError(f"{party_name(self.peer)} connection lost while sending: {exc}"))

    async def _write_shaped(self, at: float, parts: list[bytes | memoryview]) -> None:
        """Deliver a frame progressively: chunk i arrives when its last byte would, so the peer
        sees a large transfer advance at the link's bandwidth (and its idle timeout does not fire)."""
        loop = asyncio.get_running_loop()
        flat = [memoryview(p).cast("B") for p in parts]
        total = sum(len(p) for p in flat)
        bw = self.shaper.profile.bandwidth if self.shaper else 0.0
        start = at - total / bw  # arrival of the first byte
        sent = 0
        for p in flat:
            for off in range(0, len(p), SHAPE_CHUNK):
                chunk = p[off : off + SHAPE_CHUNK]
                sent += len(chunk)
                delay = start + sent / bw - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.writer.write(chunk)
                await self.writer.drain()

    # ------------------------------------------------------------------ receiving
    def ready(self, key: str) -> bool:
        """Whether the peer's message ``key`` has arrived and not been received yet."""
        fut = self._waiting.get(key)
        return fut is not None and fut.done()

    async def recv(self, key: str, timeout: float | None = None) -> tuple[list[np.ndarray], Any]:
        """The arrays (and meta) of the peer's message ``key``."""
        if self._error is not None:
            raise self._error
        fut = self._waiting.get(key)
        if fut is None:
            if self._ended is not None:  # nothing more will arrive
                raise self._ended
            fut = asyncio.get_running_loop().create_future()
            self._waiting[key] = fut
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            if timeout is None:
                return await fut
            # the timeout counts from the peer's last sign of life while we wait: neither from the
            # request alone (a peer that streams a large frame is alive) nor from before it (time
            # we spent busy ourselves is not the peer's silence)
            while True:
                idle = loop.time() - max(self.last_rx, asked)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), max(0.01, timeout - idle))
                except TimeoutError:
                    if loop.time() - max(self.last_rx, asked) >= timeout:
                        raise
        except TimeoutError:
            err = PeerError(
                f"no message {key!r} from {party_name(self.peer)} and no data for {timeout:g} s "
                "(round timeout; peer stalled or out of step)"
            )
            self._set_error(err)
            raise err from None
        finally:
            if fut.done():
                self._waiting.pop(key, None)
                self._held_bytes -= self._held.pop(key, 0)

    def expect(self, key: str) -> None:
        """Announce that message ``key`` will be received (e.g. a requested dealer answer), so that
        its early arrival is not counted as unsolicited."""
        if key not in self._waiting:
            self._waiting[key] = asyncio.get_running_loop().create_future()

    def _alive(self) -> None:
        self.last_rx = asyncio.get_running_loop().time()

    async def _read_frame(self) -> wire.Frame | None:
        try:
            head = await self.reader.readexactly(wire.HEADER.size)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise PeerError(f"{party_name(self.peer)} disconnected inside a frame header") from None
            return None
        (n,) = wire.HEADER.unpack(head)
        if n > self.max_frame:
            raise FrameError(f"frame of {n} bytes announced, max_frame is {self.max_frame}")
        loop = asyncio.get_running_loop()
        self.last_rx = loop.time()
        try:
            if n <= DIRECT_READ:
                body: bytes | np.ndarray = await self.reader.readexactly(n)
            else:  # the transport writes straight into the body (np.empty: no page is touched ahead)
                body = np.empty(n, np.uint8)
                await self.reader.readinto_exactly(memoryview(body), self._alive)
        except asyncio.IncompleteReadError:
            raise PeerError(f"{party_name(self.peer)} disconnected inside a frame of {n} bytes") from None
        self.last_rx = loop.time()
        self.stats.bytes_recv += n + wire.HEADER.size
        self.stats.frames_recv += 1
        return wire.decode_body(body, self.max_frame)

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._read_frame()
                if frame is None:
                    if self._peer_said_bye or self._closing:
                        why = f": {self.bye_reason}" if self.bye_reason else ""
                        self._ended = PeerError(f"{party_name(self.peer)} has ended the session{why}")
                        self._fail_waiters(self._ended)
                        return
                    raise PeerError(f"{party_name(self.peer)} disconnected")
                if frame.session != self.session:
                    raise FrameError(f"frame from session {frame.session!r} on session {self.session!r}")
                if frame.sender != self.peer:
                    raise FrameError(
                        f"frame claims sender {party_name(frame.sender)} on the link to {party_name(self.peer)}"
                    )
                if frame.type == "abort":
                    raise PeerError(f"{party_name(self.peer)} aborted: {frame.reason}")
                if frame.type == "busy":  # a sign of life: last_rx is already updated
                    continue
                if frame.type == "bye":
                    self._peer_said_bye = True
                    self.bye_reason = frame.reason
                    self.finished.set()
                    continue
                if frame.type == "hello":
                    raise FrameError("unexpected second hello")
                for key, arrays, meta in frame.messages:
                    self._deliver(key, arrays, meta)
        except asyncio.CancelledError:
            raise
        except (FrameError, PeerError) as exc:
            self._set_error(exc)
        except (ConnectionError, OSError) as exc:
            self._set_error(PeerError(f"{party_name(self.peer)} connection lost: {exc}"))
        finally:
            self.done.set()
            self.finished.set()

    def _deliver(self, key: str, arrays: list[np.ndarray], meta: Any) -> None:
        if key in self._seen:
            raise FrameError(f"replayed message key {key!r} from {party_name(self.peer)}")
        self._seen.add(key)
        if self.on_message is not None and self.on_message(key, arrays, meta):
            return
        fut = self._waiting.get(key)
        if fut is None:  # nobody asked yet: hold it, within bounds
            nbytes = sum(a.nbytes for a in arrays)
            if len(self._held) >= MAX_UNSOLICITED_KEYS or self._held_bytes + nbytes > MAX_UNSOLICITED_FRAMES * max(
                self.max_frame, 1 << 20
            ):
                raise FrameError(
                    f"{party_name(self.peer)} sent {len(self._held) + 1} messages ({self._held_bytes + nbytes} bytes) "
                    "that nobody asked for: more than an honest peer runs ahead"
                )
            self._held[key] = nbytes
            self._held_bytes += nbytes
            fut = asyncio.get_running_loop().create_future()
            self._waiting[key] = fut
        if not fut.done():
            fut.set_result((arrays, meta))

    # ------------------------------------------------------------------ failure
    def _set_error(self, exc: BaseException) -> None:
        if self._closing or self._closed:
            return
        if self._error is None:
            self._error = exc
            log.debug("link %s failed: %s", self.name, exc)
            self._fail_waiters(exc)
            if self.on_failure is not None:
                self.on_failure(exc)

    def _fail_waiters(self, exc: BaseException) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved; the runtime reports the cause once

    @property
    def error(self) -> BaseException | None:
        return self._error
