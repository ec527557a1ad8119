"""Bad input gets a clear error and a clean exit of every role, never a hang."""

import asyncio
import time

import numpy as np
import pytest

from secformer import ConfigError, FixedPointRangeError, FrameError, PeerError, ProtocolError, wire
from secformer.dealer import run_dealer
from secformer.launch import local_cluster, run_local_async
from secformer.mesh import open_link
from secformer.node import run_party
from secformer.tls import client_context
from tests import programs


async def test_shape_mismatch_between_parties_names_both_shapes():
    with pytest.raises(ProtocolError, match=r"P0 has shape \(3, 4\), P1 expects \(4, 3\)"):
        await run_local_async(programs.shape_mismatch)


async def test_out_of_range_input_rejected_before_any_round():
    with pytest.raises(FixedPointRangeError, match=r"1 of \d+ values out of fixed-point range \(\|x\| > bound 32768"):
        await run_local_async(programs.out_of_range)


async def test_peer_that_never_connects_times_out_with_message():
    cfg = local_cluster(connect_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(PeerError, match="could not connect to dealer"):
        await run_party(0, cfg, programs.other_program)
    assert time.monotonic() - t0 < 4


async def test_dealer_alone_reports_missing_parties():
    cfg = local_cluster(connect_timeout=1.0)
    with pytest.raises(PeerError, match="P0, P1 did not connect"):
        await run_dealer(cfg)


async def test_program_mismatch_aborts_all_three():
    cfg = local_cluster(connect_timeout=5.0)
    res = await asyncio.wait_for(
        asyncio.gather(
            run_dealer(cfg),
            run_party(1, cfg, programs.other_program),
            run_party(0, cfg, programs.shape_mismatch),
            return_exceptions=True,
        ),
        20,
    )
    assert all(isinstance(r, BaseException) for r in res), res
    assert any(isinstance(r, ConfigError) and "program differs" in str(r) for r in res), res


async def test_session_mismatch_is_refused():
    cfg = local_cluster(connect_timeout=1.5)
    other = local_cluster(connect_timeout=1.5)
    other.endpoints = cfg.endpoints
    other.session = "someone-else"
    res = await asyncio.wait_for(
        asyncio.gather(
            run_dealer(cfg),
            run_party(1, cfg, programs.other_program),
            run_party(0, other, programs.other_program),
            return_exceptions=True,
        ),
        20,
    )
    assert all(isinstance(r, BaseException) for r in res), res
    assert any("someone-else" in str(r) for r in res), res


async def _handshaken_p0(cfg, program):
    """A fake P0 that completes a correct handshake with the dealer and P1, then is under the
    test's control: it returns its two links without starting them."""
    from secformer.node import program_fingerprint

    name, digest = program_fingerprint(program)
    hello = {
        "role": "party",
        "program": name,
        "program_hash": digest,
        "frac_bits": 16,
        "wire_version": wire.VERSION,
        "netsim": "none",
        "agree": {},
    }
    ctx = client_context(cfg.tls, 0) if cfg.tls else None
    d, _ = await open_link(0, 2, cfg.endpoints[2], cfg.session, hello, 5, None, cfg.max_frame, ctx)
    p, _ = await open_link(
        0, 1, cfg.endpoints[1], cfg.session, {**hello, "pair_key": bytes(16)}, 5, None, cfg.max_frame, ctx
    )
    return d, p


ROGUE_FRAMES = {
    "oversized": (lambda s: wire.HEADER.pack(2**31), "max_frame"),
    "garbage": (lambda s: wire.HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1", "meta of"),
    "bad-meta": (lambda s: wire.HEADER.pack(6) + wire.META.pack(2) + b"\xc1\xc1", "undecodable"),
    "wrong-session": (lambda s: wire.encode_frame("data", "wrong-session", 0, messages=[]), "session"),
    "wrong-sender": (lambda s: wire.encode_frame("data", s, 2, messages=[]), "claims sender dealer"),
    "replayed-key": (
        lambda s: wire.encode_frame("data", s, 0, messages=[("x", [], None)]) * 2,
        "replayed message key",
    ),
    "truncated": (lambda s: wire.encode_frame("data", s, 0, messages=[])[:-3], "P0 disconnected inside a frame"),
}


@pytest.mark.parametrize("kind", sorted(ROGUE_FRAMES))
async def test_rogue_peer_frame_aborts_session_cleanly(kind):
    """A peer that handshakes correctly and then sends a bad frame: P1 fails with a
    FrameError naming the problem, and the dealer is told and exits too."""
    cfg = local_cluster(connect_timeout=5.0, round_timeout=10.0)
    make, match = ROGUE_FRAMES[kind]
    garbage = make(cfg.session)

    async def rogue_p0():
        d, p = await _handshaken_p0(cfg, programs.long_loop)
        p.writer.write(garbage)
        await p.writer.drain()
        if kind == "truncated":
            p.writer.close()
        await asyncio.sleep(1)
        p.writer.close()
        d.writer.close()

    t0 = time.monotonic()
    res = await asyncio.wait_for(
        asyncio.gather(run_dealer(cfg), run_party(1, cfg, programs.long_loop), rogue_p0(), return_exceptions=True),
        30,
    )
    dealer_res, p1_res, _ = res
    # a frame cut short by the peer's close is the peer's disconnection, named as such
    assert isinstance(p1_res, PeerError if kind == "truncated" else FrameError), p1_res
    assert __import__("re").search(match, str(p1_res)), str(p1_res)
    assert isinstance(dealer_res, PeerError) and "P1" in str(dealer_res), dealer_res
    assert time.monotonic() - t0 < 10


async def test_round_timeout_names_missing_message():
    """A peer that handshakes and then says nothing: the round timeout fires with a message."""
    cfg = local_cluster(connect_timeout=5.0, round_timeout=1.0)

    async def silent_p0():
        d, p = await _handshaken_p0(cfg, programs.out_of_range)
        await asyncio.sleep(2)
        p.writer.close()
        d.writer.close()

    res = await asyncio.wait_for(
        asyncio.gather(run_dealer(cfg), run_party(1, cfg, programs.out_of_range), silent_p0(), return_exceptions=True),
        30,
    )
    assert isinstance(res[1], PeerError) and "no data for 1 s" in str(res[1]), res[1]


def test_secret_shapes_checked_when_the_operation_is_written():
    """Broadcast/matmul mismatches fail synchronously, before any message."""
    from secformer.session import SecretTensor, Session

    class FakeRT:
        party, fx, pair_key = 0, __import__("secformer").FixedPoint(), None

    sess = Session(FakeRT())  # type: ignore[arg-type]
    a = SecretTensor(sess, (3, 4), None, None)  # type: ignore[arg-type]
    b = SecretTensor(sess, (5, 6), None, None)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"matmul shape mismatch: \(3, 4\) @ \(5, 6\)"):
        sess.matmul(a, b)
    with pytest.raises(ValueError):
        sess.add(a, b)
    with pytest.raises(FixedPointRangeError):
        sess.mul(a, np.full((3, 4), 1e12))


async def test_work_left_behind_by_a_cancelled_session_is_cancelled_and_its_error_retrieved():
    """When the task that waits in ``until_failure`` is cancelled (a server shutting a session
    down), the work it started is cancelled too, and an error the work ends with is retrieved:
    nothing runs on unowned, and asyncio logs no "Task exception was never retrieved"."""
    import gc

    from secformer.node import until_failure

    loop = asyncio.get_running_loop()
    unretrieved: list[dict] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    started = asyncio.Event()
    cancelled = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise PeerError("P1 disconnected") from None  # what a link's reader raises

    try:
        failed: asyncio.Future[BaseException] = loop.create_future()
        waiter = asyncio.ensure_future(until_failure(work(), failed))
        await started.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert cancelled, "the work kept running after its session was cancelled"
    assert not [c for c in unretrieved if "never retrieved" in c.get("message", "")], unretrieved
