import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secformer import FrameError, wire


def test_frame_roundtrip_keeps_arrays_keys_and_meta():
    a = np.arange(12, dtype=np.uint64).reshape(3, 4)
    b = np.array([1, 2, 3], dtype=np.uint8)
    data = wire.encode_frame("data", "s1", 1, messages=[("q0/3", [a, b], None), ("q0/4", [], {"k": "mul"})])
    (n,) = wire.HEADER.unpack(data[:4])
    f = wire.decode_body(data[4:])
    assert n == len(data) - 4 and f.type == "data" and f.session == "s1" and f.sender == 1
    (k1, arrs, m1), (k2, arrs2, m2) = f.messages
    assert k1 == "q0/3" and np.array_equal(arrs[0], a) and np.array_equal(arrs[1], b) and m1 is None
    assert k2 == "q0/4" and arrs2 == [] and m2 == {"k": "mul"}


def test_oversized_frame_refused_on_encode():
    with pytest.raises(FrameError, match="exceeds max_frame"):
        wire.encode_frame("data", "s", 0, messages=[("k", [np.zeros(1000, np.uint64)], None)], max_frame=1000)


def body(payload=b"", **kw):
    b = {"v": wire.VERSION, "s": "s", "p": 0, "t": "data", "m": []}
    b.update(kw)
    packed = msgpack.packb(b, use_bin_type=True)
    return wire.META.pack(len(packed)) + packed + payload


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xc1", "shorter than its meta"),
        (wire.META.pack(1) + b"\xc1", "undecodable"),
        (wire.META.pack(99) + b"\x90", "meta of 99 bytes"),
        (wire.META.pack(3) + msgpack.packb([1, 2]), "not a map"),
        (body(v=9), "version"),
        (body(t="nope"), "frame type"),
        (body(s=5), "session"),
        (body(p=7), "sender"),
        (body(m="x"), "message list"),
        (body(m=[["k", [["u64", [2]]]]], payload=b"\x00" * 8), "runs past the payload"),
        (body(m=[["k", [["u64", [1]]]]], payload=b"\x00" * 9), "arrays account for 8"),
        (body(m=[["k", [["c128", [1]]]]], payload=b"\x00" * 16), "dtype"),
        (body(m=[["k", [["u64", [-1]]]]]), "shape"),
        (body(m=[[3, []]]), "message must be"),
    ],
)
def test_malformed_bodies_raise_frame_error_naming_problem(payload, match):
    with pytest.raises(FrameError, match=match):
        wire.decode_body(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_decoder(data):
    with contextlib.suppress(FrameError):
        wire.decode_body(data)


async def test_messages_beyond_max_frame_travel_in_several_frames():
    """A tick's messages that together exceed max_frame are split into frames (each within it)."""
    from secformer.launch import local_cluster, run_local_async
    from secformer.session import Session

    async def program(sess: Session, inputs):
        xs = [sess.input(0, np.full((64, 1024), float(i)) if sess.party == 0 else None, (64, 1024)) for i in range(6)]
        vals = await sess.gather(*(sess.reveal(x) for x in xs))  # six openings in one tick
        return [float(v[0, 0]) for v in vals], sess.stats()["frames"]

    cfg = local_cluster()
    cfg.max_frame = 1 << 21  # 2 MiB: six 512 KiB openings in one tick need two frames or more
    r = await run_local_async(program, cfg=cfg)
    vals, frames = r.outputs[1]
    assert vals == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert frames >= 2  # P1 (no inputs to check) sent its six openings in two frames or more
