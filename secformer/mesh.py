"""Who connects to whom: listening, connecting with retries, mutual TLS and the handshake.

Each role listens for the roles that connect to it (:class:`Listener`) and connects to the others
(:func:`open_link`); either way the result is a handshaken :class:`secformer.link.Link`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from netsim import Profile
from secformer import wire
from secformer.errors import FrameError, PeerError
from secformer.link import STREAM_LIMIT, Link, party_name
from secformer.streams import DirectReader, direct_streams
from secformer.tls import ROLE_NAMES, peer_name, peer_role

log = logging.getLogger("secformer.mesh")


@dataclass
class Endpoint:
    host: str
    port: int


async def open_link(
    me: int,
    peer: int,
    endpoint: Endpoint,
    session: str,
    hello: dict[str, Any],
    connect_timeout: float,
    profile: Profile | None,
    max_frame: int,
    ssl_ctx: ssl.SSLContext | None = None,
) -> tuple[Link, dict[str, Any]]:
    """Connect to a listening peer (retrying until ``connect_timeout``) and handshake.

    With ``ssl_ctx`` the link is mutual TLS and the peer's certificate must name ``peer``'s
    role; a TLS failure is final (no retry), a refused or unreachable port is retried."""
    deadline = time.monotonic() + connect_timeout
    last: Exception | None = None
    where = f"{party_name(peer)} at {endpoint.host}:{endpoint.port}"
    while True:
        try:
            loop = asyncio.get_running_loop()
            reader, proto = direct_streams(loop, STREAM_LIMIT)
            tr, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda proto=proto: proto,
                    endpoint.host,
                    endpoint.port,
                    ssl=ssl_ctx,
                    server_hostname=ROLE_NAMES[peer] if ssl_ctx else None,
                    ssl_handshake_timeout=max(1.0, deadline - time.monotonic()) if ssl_ctx else None,
                ),
                max(0.1, deadline - time.monotonic()),
            )
            writer = asyncio.StreamWriter(tr, proto, reader, loop)
            break
        except ssl.SSLError as exc:
            detail = getattr(exc, "verify_message", None)
            raise PeerError(
                f"TLS handshake with {where} failed: {exc.reason or exc}"
                + (f" ({detail}: its certificate is not from our cluster CA)" if detail else "")
            ) from None
        except (OSError, TimeoutError) as exc:
            last = exc
            if time.monotonic() >= deadline:
                raise PeerError(f"could not connect to {where} within {connect_timeout:g} s ({last})") from None
            await asyncio.sleep(0.05)
    if ssl_ctx is not None:
        role = peer_role(writer.get_extra_info("ssl_object"))
        if role != ROLE_NAMES[peer]:
            writer.close()
            raise PeerError(f"refusing {where}: its certificate names {role!r}, expected {ROLE_NAMES[peer]!r}")
    link = Link(reader, writer, me, peer, session, profile, max_frame)
    await link.send_hello(hello)
    info = await link.read_hello(max(0.1, deadline - time.monotonic()) + 5.0)
    return link, info


class Listener:
    """Accepts connections from the expected peers and hands over handshaken links."""

    def __init__(
        self,
        me: int,
        expected: set[int],
        session: str,
        hello: dict[str, Any] | Callable[[int], dict[str, Any]],
        profile: Profile | None,
        max_frame: int,
        ssl_ctx: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.me, self.expected, self.session = me, set(expected), session
        self.hello, self.profile, self.max_frame = hello, profile, max_frame
        self.ssl_ctx, self.handshake_timeout = ssl_ctx, handshake_timeout
        self.links: dict[int, tuple[Link, dict[str, Any]]] = {}
        self._done = asyncio.get_running_loop().create_future()
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.refused: list[str] = []
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._sock = socket.create_server((host, port), backlog=128)
        self._sock.setblocking(False)
        self._accepting = loop.create_task(
            _accept_loop(self._sock, self._accept, self._pending), name=f"accept {party_name(self.me)}"
        )
        return int(self._sock.getsockname()[1])

    async def _accept(self, conn: socket.socket, peer_addr: Any) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            roles = {ROLE_NAMES[p] for p in self.expected}
            reader, writer, frame, _ = await receive_hello(conn, self.ssl_ctx, roles, self.handshake_timeout)
            if frame.session != self.session:
                raise FrameError(f"session {frame.session!r} is not ours ({self.session!r})")
            if frame.sender not in self.expected:
                raise FrameError(f"unexpected party {party_name(frame.sender)}")
            if frame.sender in self.links:
                raise FrameError(f"{party_name(frame.sender)} is already connected: a second connection is refused")
        except FrameError as exc:
            if isinstance(exc, _HelloError):
                writer = exc.writer
            msg = f"{party_name(self.me)} refused connection from {peer_addr}: {exc}"
            log.warning(msg, extra={"event": "refused", "peer_addr": str(peer_addr)})
            self.refused.append(msg)
            refuse(writer, conn, self.session, self.me, str(exc))
            return
        link = Link(reader, writer, self.me, frame.sender, self.session, self.profile, self.max_frame)
        # taken before the first await: a second connection claiming the same role (same certificate)
        # while this one is open is refused, also when both arrive at once
        self.links[frame.sender] = (link, frame.info)
        await link.send_hello(self.hello(frame.sender) if callable(self.hello) else self.hello)
        if set(self.links) >= self.expected and not self._done.done():
            self._done.set_result(None)

    async def wait(self, timeout: float) -> dict[int, tuple[Link, dict[str, Any]]]:
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            missing = sorted(self.expected - set(self.links))
            names = ", ".join(party_name(m) for m in missing)
            extra = f" (refused: {'; '.join(self.refused)})" if self.refused else ""
            raise PeerError(f"{names} did not connect within {timeout:g} s{extra}") from None
        return self.links

    def close(self) -> None:
        _stop_listening(self)


# ---------------------------------------------------------------------------- accepting


class _HelloError(FrameError):
    """A refused first frame, with the writer to send the refusal on (if the streams exist)."""

    def __init__(self, msg: str, writer: asyncio.StreamWriter | None) -> None:
        super().__init__(msg)
        self.writer = writer


@dataclass
class Cert:
    """What the peer's verified certificate says: its role and, for a client, its name."""

    role: str | None
    name: str | None


async def _streams(
    conn: socket.socket, ssl_ctx: ssl.SSLContext | None, timeout: float
) -> tuple[DirectReader, asyncio.StreamWriter]:
    """Streams over an accepted socket, after the TLS handshake if any. The socket joins the
    event loop only here, so no byte is read before TLS and a failed handshake is ours to
    report (a server created with ``ssl=`` would drop it silently)."""
    loop = asyncio.get_running_loop()
    reader, proto = direct_streams(loop, STREAM_LIMIT)
    with contextlib.suppress(OSError):  # one frame per round: never wait to coalesce (Nagle)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        tr, _ = await loop.connect_accepted_socket(
            lambda: proto,
            conn,
            ssl=ssl_ctx,
            ssl_handshake_timeout=timeout if ssl_ctx is not None else None,
        )
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
        with contextlib.suppress(OSError):
            conn.close()
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        what = "TLS handshake failed" if ssl_ctx is not None else "connection failed"
        raise _HelloError(f"{what} ({reason})", None) from None
    return reader, asyncio.StreamWriter(tr, proto, reader, loop)


async def receive_hello(
    conn: socket.socket, ssl_ctx: ssl.SSLContext | None, roles: set[str], timeout: float
) -> tuple[DirectReader, asyncio.StreamWriter, wire.Frame, Cert]:
    """TLS (certificate naming one of ``roles``), then the first frame, which must be a hello
    whose sender matches the certificate. Raises :class:`FrameError` (with the writer to refuse on)."""
    reader, writer = await _streams(conn, ssl_ctx, timeout)
    cert = Cert(None, None)
    try:
        if ssl_ctx is not None:
            obj = writer.get_extra_info("ssl_object")
            cert = Cert(peer_role(obj), peer_name(obj))
            if cert.role not in roles:
                raise FrameError(f"certificate names {cert.role!r}, not one of {sorted(roles)}")
        head = await asyncio.wait_for(reader.readexactly(wire.HEADER.size), timeout)
        (n,) = wire.HEADER.unpack(head)
        if n > 1 << 20:
            raise FrameError(f"handshake frame of {n} bytes is too large")
        frame = wire.decode_body(await asyncio.wait_for(reader.readexactly(n), timeout))
        if frame.type != "hello":
            raise FrameError(f"first frame must be hello, got {frame.type!r}")
        if cert.role is not None and ROLE_NAMES.get(frame.sender) != cert.role:
            raise FrameError(f"certificate of {cert.role!r} used to claim to be {party_name(frame.sender)}")
    except (FrameError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        if isinstance(exc, asyncio.IncompleteReadError):
            exc = FrameError(f"connection closed after {len(exc.partial)} bytes, before a complete hello")
        elif isinstance(exc, TimeoutError):
            exc = FrameError(f"no complete hello within {timeout:g} s")
        raise _HelloError(str(exc), writer) from None
    return reader, writer, frame, cert


def refuse(writer: asyncio.StreamWriter | None, conn: socket.socket, session: str, me: int, reason: str) -> None:
    """Tell a connecting peer why it is refused (an abort frame, best effort) and close."""
    with contextlib.suppress(Exception):
        if writer is not None:
            writer.write(wire.encode_frame("abort", session, me, reason=reason[:2000]))
            writer.close()
        else:
            conn.close()


@dataclass
class Arrival:
    """A connection that has said hello and awaits our answer (:meth:`accept` or :meth:`refuse`)."""

    reader: DirectReader
    writer: asyncio.StreamWriter
    conn: socket.socket
    frame: wire.Frame
    cert: Cert
    addr: Any

    @property
    def session(self) -> str:
        return self.frame.session

    @property
    def sender(self) -> int:
        return self.frame.sender

    @property
    def info(self) -> dict[str, Any]:
        return self.frame.info

    def link(self, me: int, profile: Profile | None, max_frame: int) -> Link:
        return Link(self.reader, self.writer, me, self.sender, self.session, profile, max_frame)

    def refuse(self, me: int, reason: str) -> None:
        refuse(self.writer, self.conn, self.session, me, reason)


class Acceptor:
    """Accepts connections of many sessions (a long-lived service): every connection whose TLS
    and hello are sound is handed to ``on_arrival``; the others are refused and logged here."""

    def __init__(
        self,
        me: int,
        roles: set[str],
        on_arrival: Callable[[Arrival], Awaitable[None]],
        ssl_ctx: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.me, self.roles, self.on_arrival = me, roles, on_arrival
        self.ssl_ctx, self.handshake_timeout = ssl_ctx, handshake_timeout
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.refused = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self._sock = socket.create_server((host, port), backlog=128)
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(
            _accept_loop(self._sock, self._accept, self._pending), name=f"accept {party_name(self.me)}"
        )
        return int(self._sock.getsockname()[1])

    async def _accept(self, conn: socket.socket, addr: Any) -> None:
        try:
            reader, writer, frame, cert = await receive_hello(conn, self.ssl_ctx, self.roles, self.handshake_timeout)
        except FrameError as exc:
            self.refused += 1
            log.warning(
                "%s refused connection from %s: %s",
                party_name(self.me),
                addr,
                exc,
                extra={"event": "refused", "peer_addr": str(addr)},
            )
            refuse(exc.writer if isinstance(exc, _HelloError) else None, conn, "", self.me, str(exc))
            return
        await self.on_arrival(Arrival(reader, writer, conn, frame, cert, addr))

    def close(self) -> None:
        """Stop accepting (connections already handed over are not affected)."""
        _stop_listening(self)


def _stop_listening(server: Listener | Acceptor) -> None:
    """Cancel the accept loop and the handshakes in progress, close the listening socket."""
    if server._accepting is not None:
        server._accepting.cancel()
    if server._sock is not None:
        server._sock.close()
        server._sock = None
    for t in list(server._pending):
        t.cancel()


async def answer_status(a: Arrival, me: int, status: dict[str, Any], roles: tuple[str | None, ...]) -> None:
    """Answer a ``{"request": "status"}`` hello with ``status`` (if the certificate's role is
    one of ``roles``; None: a plaintext link) and close."""
    if a.cert.role not in roles:
        a.refuse(me, f"status is for the operators ({', '.join(r for r in roles if r)} certificates)")
        return
    with contextlib.suppress(Exception):
        await a.link(me, None, wire.DEFAULT_MAX_FRAME).send_hello({"status": status})
        a.writer.close()


async def _accept_loop(
    sock: socket.socket, handle: Callable[[socket.socket, Any], Awaitable[None]], pending: set[asyncio.Task[None]]
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, addr = await loop.sock_accept(sock)
        except OSError as exc:  # out of descriptors and the like: log, back off, go on
            log.warning("accept failed: %s", exc)
            await asyncio.sleep(0.1)
            continue
        task = loop.create_task(handle(conn, addr))
        pending.add(task)
        task.add_done_callback(pending.discard)
