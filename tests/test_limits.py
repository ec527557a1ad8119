"""Bounds a peer cannot push a role past: dealer material per request and per query, messages
nobody asked for, frame buffers, duplicate connections; and a dealer failure of any kind
(MemoryError included) ends the session cleanly for all three roles."""

from __future__ import annotations

import asyncio
import os
import socket

import numpy as np
import pytest

from secformer import FrameError, PeerError, ProtocolError, SecformerError, material, wire
from secformer.launch import local_cluster, run_local
from secformer.link import MAX_UNSOLICITED_FRAMES, STREAM_LIMIT, Link
from secformer.mesh import _streams
from secformer.prg import PRG
from secformer.session import Session
from secformer.streams import DirectReader, direct_streams
from secformer.tls import ROLE_NAMES, client_context, server_context


def test_a_broadcast_product_of_two_2e31_vectors_is_refused_by_size():
    spec = {"shape": [2**31, 1], "shape_b": [1, 2**31]}
    assert material.request_bytes("mul", spec) > 2**60
    prg = PRG(bytes(16))
    with pytest.raises(ProtocolError, match="MB per request"):
        material.dealer_generate("mul", spec, "k", prg, prg, max_bytes=2048 << 20)


async def _raw_request(sess: Session, inputs: dict) -> None:
    """P1 sends the dealer a request of its choosing (as a dishonest client could) and waits."""
    if sess.party == 1:
        link = sess.rt.provider.link
        link.expect("evil")
        link.send("evil", [], meta={"k": inputs["kind"], "s": dict(inputs["spec"])})
        await link.recv("evil", 30)
    await sess.barrier()


@pytest.mark.parametrize(
    "kind, spec, match",
    [
        ("mul", {"shape": [2**31, 1], "shape_b": [1, 2**31]}, "MB per request"),
        ("mul", {"shape": [2**20]}, "GB of material"),  # with a per-query cap of 1 MB
    ],
)
def test_the_dealer_refuses_oversized_requests_and_every_role_stops(kind, spec, match):
    cfg = local_cluster()
    cfg.dealer_max_query = 1 << 20
    with pytest.raises(SecformerError, match=match):
        run_local(_raw_request, {}, {"kind": kind, "spec": spec}, cfg=cfg)


@pytest.mark.parametrize(
    "kind, spec, match",
    [
        ("mul", {"shape": [4], "evil": 1}, "no parameter"),
        ("trig", {"shape": [4]}, "missing parameter"),
        ("ltz", {"shape": [4], "bits": 30}, "must be in"),
        ("mul", {"shape": "abcd"}, "must be a shape"),
        ("trunc", {"shape": [4], "bits": True}, "must be an int"),
        ("nonsense", {"shape": [4]}, "unknown material kind"),
    ],
)
def test_the_dealer_refuses_ill_typed_requests_naming_the_parameter(kind, spec, match):
    """Requests are typed (material.Spec): the dealer parses each one before generating anything."""
    with pytest.raises(SecformerError, match=match):
        run_local(_raw_request, {}, {"kind": kind, "spec": spec})


def test_material_specs_are_checked_when_made_and_round_trip_the_wire():
    spec = material.Ltz((3, 4), 1, 31)
    assert material.parse_spec("ltz", spec.wire()) == spec
    assert spec["shape"] == [3, 4] and spec.get("missing", 7) == 7
    with pytest.raises(ProtocolError, match="bits"):
        material.Trunc((4,), 61)
    with pytest.raises(ProtocolError, match="shape"):
        material.Mul((-1,))


def test_a_memory_error_in_the_dealer_ends_the_session_cleanly(monkeypatch):
    def boom(spec, s0, s1, ctx=None):
        raise MemoryError("simulated: the dealer ran out of memory")

    monkeypatch.setitem(material.KINDS, "mul", material.Kind(material.KINDS["mul"].fields, boom))

    async def prog(sess: Session, inputs: dict):
        x = sess.input(0, inputs.get("x"), (4,))
        return await sess.reveal(x * x)

    with pytest.raises(SecformerError, match=r"dealer could not serve .*MemoryError"):
        run_local(prog, {"x": np.ones(4)}, {})


async def _link_pair(max_frame: int = 1 << 20, tls: bool = False) -> tuple[Link, Link, socket.socket]:
    """Two linked ends over loopback, built as the mesh builds them (direct-read streams, and
    with ``tls`` mutual TLS with the roles' throw-away certificates)."""
    loop = asyncio.get_running_loop()
    cert = local_cluster().tls if tls else None
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    reader, proto = direct_streams(loop, STREAM_LIMIT)
    connect = loop.create_connection(
        lambda: proto,
        *lsock.getsockname(),
        ssl=client_context(cert, 0) if cert else None,
        server_hostname=ROLE_NAMES[1] if cert else None,
    )

    async def accept() -> tuple[DirectReader, asyncio.StreamWriter]:
        conn, _ = await loop.sock_accept(lsock)
        return await _streams(conn, server_context(cert, 1) if cert else None, 5.0)

    (tr, _), (r1, w1) = await asyncio.gather(connect, accept())
    a = Link(reader, asyncio.StreamWriter(tr, proto, reader, loop), 0, 1, "s", max_frame=max_frame)
    b = Link(r1, w1, 1, 0, "s", max_frame=max_frame)
    a.start()
    b.start()
    return a, b, lsock


CHUNK = np.zeros((1 << 20) // 8 - 4096, np.uint64)  # just under a 1 MiB frame


async def _send_frames(link: Link, prefix: str, n: int) -> None:
    """n messages of one almost-full frame each, keyed prefix/0 .. prefix/n-1."""
    for i in range(n):
        link.send(f"{prefix}/{i}", [CHUNK])
        await asyncio.sleep(0.03)


async def test_messages_nobody_asked_for_are_refused_beyond_a_bound():
    a, b, server = await _link_pair(max_frame=1 << 20)
    try:
        await _send_frames(a, "flood", MAX_UNSOLICITED_FRAMES + 2)
        with pytest.raises(FrameError, match="nobody asked for"):
            await b.recv("never", timeout=10)
    finally:
        a.abort("test over")
        b.abort("test over")
        server.close()


async def test_messages_that_are_asked_for_are_not_bounded():
    a, b, server = await _link_pair(max_frame=1 << 20)
    try:
        n = MAX_UNSOLICITED_FRAMES + 2
        for i in range(n):
            b.expect(f"asked/{i}")  # e.g. P1's requested dealer material, prefetched
        await _send_frames(a, "asked", n)
        for i in range(n):
            arrays, _ = await b.recv(f"asked/{i}", timeout=10)
            assert arrays[0].shape == CHUNK.shape
    finally:
        a.abort("test over")
        b.abort("test over")
        server.close()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
async def test_an_announced_frame_costs_memory_only_as_its_bytes_arrive():
    """A peer announcing a max-size frame and sending nothing more costs us no resident memory:
    the body's buffer is reserved (address space) but its pages are touched only by arriving bytes."""
    a, b, server = await _link_pair(max_frame=1 << 30)
    try:
        before = _resident_bytes()
        a.writer.write(wire.HEADER.pack(1 << 30) + b"\x00" * 100)  # announce 1 GiB, send 100 bytes
        await asyncio.sleep(0.3)
        assert _resident_bytes() - before < 64 << 20
        assert b.error is None  # still waiting for the rest, within the round timeout
    finally:
        a.abort("test over")
        b.abort("test over")
        server.close()
    with pytest.raises(PeerError):
        await b.recv("x", timeout=1)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_large_frames_read_straight_into_their_buffers_arrive_intact(tls):
    """Frames above the direct-read size, back to back (so a header and the start of a body share
    one socket read), arrive bit-exact, over TCP and TLS; small ones between them take the
    buffered path."""
    a, b, server = await _link_pair(max_frame=1 << 26, tls=tls)
    rng = np.random.default_rng(3)
    sizes = [(1 << 16) // 8 + 5, 3, (5 << 20) // 8, 7, (20 << 20) // 8 + 1]
    sent = [rng.integers(0, 2**63, n, dtype=np.uint64) for n in sizes]
    try:
        for i, x in enumerate(sent):
            b.expect(f"m/{i}")
            a.send(f"m/{i}", [x])
            if i % 2:
                await asyncio.sleep(0)  # let some frames leave alone, others together
        for i, x in enumerate(sent):
            (got,), _ = await b.recv(f"m/{i}", timeout=10)
            np.testing.assert_array_equal(got, x)
        assert isinstance(b.reader, DirectReader) and b.stats.frames_recv >= 2
    finally:
        a.abort("test over")
        b.abort("test over")
        server.close()
