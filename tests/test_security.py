"""Authenticated links, refused strangers, fuzzed frames: the runtime under hostile input."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import ssl
import stat
import time

import msgpack
import numpy as np
import pytest

from secformer import ConfigError, FrameError, PeerError, wire
from secformer.config import ClusterConfig
from secformer.dealer import run_dealer
from secformer.launch import local_cluster, local_tls, run_local_async
from secformer.node import run_party
from secformer.tls import TLSConfig, client_context, keygen, peer_role, tls_config_for
from tests import programs
from tests.conftest import check


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]


def test_keygen_writes_private_keys_and_the_config_section(tmp_path):
    from secformer.cli import main

    cfg_path = tmp_path / "cluster.toml"
    cfg_path.write_text(local_cluster(insecure=True).to_toml())
    with pytest.raises(SystemExit) as e:
        main(["keygen", str(tmp_path / "certs"), "--config", str(cfg_path)])
    assert e.value.code == 0
    cfg = ClusterConfig.load(cfg_path)
    assert cfg.tls is not None and cfg.tls.ca == tmp_path / "certs" / "ca.pem"
    for pid, role in ((0, "party0"), (1, "party1"), (2, "dealer")):
        assert cfg.tls.cert_for(pid) == tmp_path / "certs" / f"{role}.pem"
        assert stat.S_IMODE(os.stat(cfg.tls.key_for(pid)).st_mode) == 0o600, "private key readable by others"
        client_context(cfg.tls, pid)  # loads: key matches certificate, CA parses
    assert stat.S_IMODE(os.stat(tmp_path / "certs" / "ca.key").st_mode) == 0o600
    with pytest.raises(SystemExit) as e:  # an existing CA is not overwritten by accident
        main(["keygen", str(tmp_path / "certs")])
    assert e.value.code == 2


async def test_links_are_mutual_tls_by_default(caplog):
    caplog.set_level(logging.INFO, logger="secformer")
    in0, in1 = {"x": np.linspace(-1, 1, 64), "rounds": 1}, {"y": np.linspace(2, 3, 64), "rounds": 1}
    r = await run_local_async(programs.under_fire, in0, in1)
    check(r.outputs[0], in0["x"] * in1["y"], atol=1e-3, msg="result over TLS")
    links = [m for m in (r.getMessage() for r in caplog.records) if " connected to " in m]
    assert len(links) == 6 and all("TLSv1.3" in m for m in links), links


async def test_plaintext_needs_the_insecure_flag_and_warns(caplog):
    cfg = local_cluster(insecure=True)
    cfg.insecure = False
    with pytest.raises(ConfigError, match="--insecure"):
        await run_dealer(cfg)
    caplog.set_level(logging.WARNING)
    r = await run_local_async(
        programs.under_fire, {"x": np.ones(64), "rounds": 0}, {"y": np.ones(64), "rounds": 0}, insecure=True
    )
    check(r.outputs[1], np.ones(64), atol=1e-3)
    warnings = [r.getMessage() for r in caplog.records if "INSECURE MODE" in r.getMessage()]
    assert len(warnings) == 3, "each of the three roles must say it runs without TLS"


async def _session(cfg0: ClusterConfig, cfg: ClusterConfig) -> list[object]:
    inputs = ({"x": np.ones(64), "rounds": 0}, {"y": np.ones(64), "rounds": 0})
    return await asyncio.wait_for(
        asyncio.gather(
            run_dealer(cfg),
            run_party(1, cfg, programs.under_fire, inputs[1]),
            run_party(0, cfg0, programs.under_fire, inputs[0]),
            return_exceptions=True,
        ),
        30,
    )


@pytest.mark.parametrize("trusts", ["rogue CA", "cluster CA"])
async def test_certificate_from_another_ca_is_refused_and_all_stop(tmp_path, caplog, trusts):
    """A P0 whose key was issued by another CA: if it trusts only that CA it refuses the
    dealer; if it trusts ours, the dealer refuses it. Either way all three stop, with reasons."""
    cfg = local_cluster(connect_timeout=3.0)
    assert cfg.tls is not None
    rogue_tls = tls_config_for(keygen(tmp_path / "rogue")["ca"].parent)
    if trusts == "cluster CA":
        rogue_tls = dataclasses.replace(rogue_tls, ca=cfg.tls.ca)
    t0 = time.monotonic()
    dealer, p1, p0 = await _session(dataclasses.replace(cfg, tls=rogue_tls), cfg)
    assert time.monotonic() - t0 < 10
    assert isinstance(p0, PeerError) and "dealer" in str(p0), p0
    if trusts == "rogue CA":
        assert "CERTIFICATE_VERIFY_FAILED" in str(p0) and "not from our cluster CA" in str(p0), p0
    else:
        assert "refused the TLS connection" in str(p0) or "refuses our certificate" in str(p0), p0
        assert any("TLS handshake failed" in m and "CERTIFICATE" in m.upper() for m in _refusals(caplog)), _refusals(
            caplog
        )
    assert isinstance(dealer, PeerError) and "P0 did not connect" in str(dealer), dealer
    assert isinstance(p1, PeerError), p1
    assert any("TLS handshake failed" in m for m in _refusals(caplog)), _refusals(caplog)


async def test_valid_certificate_of_the_wrong_party_is_refused(caplog):
    """P1's key used to pose as P0: the dealer refuses it and says why; nobody hangs."""
    cfg = local_cluster(connect_timeout=3.0)
    assert cfg.tls is not None
    as_p1 = TLSConfig(cfg.tls.ca, str(cfg.tls.cert_for(1)), str(cfg.tls.key_for(1)))
    dealer, p1, p0 = await _session(dataclasses.replace(cfg, tls=as_p1), cfg)
    assert all(isinstance(r, PeerError | ConfigError) for r in (dealer, p1, p0)), (dealer, p1, p0)
    assert any("certificate of 'party1' used to claim to be P0" in m for m in _refusals(caplog)), _refusals(caplog)


async def test_party_refuses_a_server_holding_another_roles_certificate():
    """P0 told that the dealer is at P1's port: P1's certificate is not the dealer's."""
    cfg = local_cluster(connect_timeout=3.0)
    wrong = dataclasses.replace(cfg, endpoints={**cfg.endpoints, 2: cfg.endpoints[1]})
    dealer, p1, p0 = await _session(wrong, cfg)
    assert isinstance(p0, PeerError) and "certificate names 'party1', expected 'dealer'" in str(p0), p0
    assert isinstance(dealer, PeerError) and isinstance(p1, PeerError)


def test_throwaway_certificates_name_their_roles():
    tls = local_tls()
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    for pid, role in ((0, "party0"), (1, "party1"), (2, "dealer")):
        cert = ssl._ssl._test_decode_cert(str(tls.cert_for(pid)))  # type: ignore[attr-defined]

        class Obj:
            def getpeercert(self, c=cert):
                return c

        assert peer_role(Obj()) == role
    assert ctx.cert_store_stats()["x509_ca"] == 1


# ---------------------------------------------------------------------- fuzzing


def _malformed_frames(session: str, n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """``n`` malformed, truncated, oversized and wrong-session first frames (seeded)."""
    rnd = random.Random(seed)
    hello = wire.encode_frame("hello", session, 0, info={"role": "party"})

    def meta_frame(meta: object, payload: bytes = b"") -> bytes:
        m = msgpack.packb(meta, use_bin_type=True)
        return wire.HEADER.pack(wire.META.size + len(m) + len(payload)) + wire.META.pack(len(m)) + m + payload

    base = {"v": wire.VERSION, "s": session, "p": 0, "t": "hello", "h": {}}
    makers = [
        ("random bytes", lambda: rnd.randbytes(rnd.randint(1, 300))),
        ("oversized length", lambda: wire.HEADER.pack(rnd.randint(1 << 21, 2**32 - 1)) + rnd.randbytes(64)),
        ("truncated hello", lambda: hello[: rnd.randint(1, len(hello) - 1)]),
        ("meta longer than frame", lambda: wire.HEADER.pack(8) + wire.META.pack(1000) + b"abcd"),
        ("meta not msgpack", lambda: wire.HEADER.pack(9) + wire.META.pack(5) + b"\xc1\xc1\xc1\xc1\xc1"),
        ("meta not a map", lambda: meta_frame([1, 2, 3])),
        ("wrong version", lambda: meta_frame({**base, "v": rnd.choice([0, 1, 3, "2", None])})),
        ("unknown type", lambda: meta_frame({**base, "t": rnd.choice(["helo", "", 5, "data2"])})),
        ("wrong session", lambda: wire.encode_frame("hello", session + "x", 0, info={})),
        ("bad sender", lambda: meta_frame({**base, "p": rnd.choice([-1, 3, 7, "P0", True, None, 2**40])})),
        ("hello without info", lambda: meta_frame({k: v for k, v in base.items() if k != "h"})),
        ("data before hello", lambda: wire.encode_frame("data", session, 0, messages=[("k", [np.ones(3)], None)])),
        ("abort before hello", lambda: wire.encode_frame("abort", session, 0, reason="x")),
        ("bye before hello", lambda: wire.encode_frame("bye", session, 0)),
        ("wrong party", lambda: wire.encode_frame("hello", session, rnd.choice([1, 2]), info={})),
        ("second P0", lambda: hello),
        (
            "arrays past payload",
            lambda: meta_frame({**base, "t": "data", "m": [["k", [["f64", [1 << 20]]]]]}, b"\x00" * 8),
        ),
        ("bad dtype", lambda: meta_frame({**base, "t": "data", "m": [["k", [["f32", [2]]]]]}, b"\x00" * 8)),
        ("huge map", lambda: meta_frame({str(i): i for i in range(2000)})),
        ("nested junk", lambda: meta_frame({**base, "h": [[[[[]]]]] * 50})),
        (
            "bit flips",
            lambda: bytes(b ^ (1 << rnd.randrange(8)) if rnd.random() < 0.05 else b for b in hello),
        ),
    ]
    return [(name, fn()) for name, fn in (makers[i % len(makers)] for i in range(n))]


async def _fire(port: int, data: bytes, ctx: ssl.SSLContext | None) -> str:
    """Send one first frame; return how the connection ended."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="x" if ctx else None), 5
        )
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused at connect: {exc}"
    try:
        writer.write(data)
        await writer.drain()
        got = await asyncio.wait_for(reader.read(1 << 16), 8)  # the abort frame, then EOF
        return "closed" if not got else "answered"
    except (ConnectionError, ssl.SSLError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        writer.close()


async def test_fuzzed_first_frames_are_refused_while_the_honest_session_completes(caplog):
    """132 malformed, truncated, oversized and wrong-session frames, each on its own TLS
    connection made with a valid cluster certificate, plus raw non-TLS garbage, hit P1's and
    the dealer's listeners during a running session: each is refused with a log line, no role
    crashes, and the honest result is still correct."""
    cfg = local_cluster(connect_timeout=3.0)
    assert cfg.tls is not None
    up = asyncio.Event()
    x, y = np.linspace(-2, 2, 64), np.linspace(1, 3, 64)
    session = asyncio.ensure_future(
        run_local_async(programs.under_fire, {"x": x, "rounds": 250}, {"y": y, "up": up, "rounds": 250}, cfg=cfg)
    )
    await asyncio.wait_for(up.wait(), 30)
    ctx = client_context(cfg.tls, 0)  # a valid certificate: the frames reach the parser
    frames = _malformed_frames(cfg.session, 132)
    outcomes = await asyncio.gather(*(_fire(cfg.endpoints[1 + j % 2].port, f, ctx) for j, (_, f) in enumerate(frames)))
    raw = await asyncio.gather(*(_fire(cfg.endpoints[2].port, os.urandom(200), None) for _ in range(8)))
    run = await asyncio.wait_for(session, 60)
    check(run.outputs[0], x * y, atol=1e-3, msg="honest result under fuzzing")
    refused = _refusals(caplog)
    assert len(refused) >= len(frames) + len(raw), (len(refused), outcomes)
    kinds = {name for name, _ in frames}
    assert len(kinds) == 21
    # every refusal names a cause; none is an internal error
    assert all(("refused connection from" in m and ": " in m) for m in refused)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "refused" not in r.getMessage()]
    assert "TimeoutError" not in outcomes + raw, "a listener left a malformed connection hanging"


def test_decoder_rejects_10000_mutated_frames_with_frame_errors_only():
    """Bit flips, truncations, splices and random lengths of valid frames: decode_body
    returns a Frame or raises FrameError, never anything else."""
    rnd = random.Random(11)
    seeds = [
        wire.encode_frame("hello", "s", 0, info={"a": 1, "k": b"0" * 16}),
        wire.encode_frame("data", "s", 1, messages=[("k/1", [np.arange(6.0).reshape(2, 3), np.ones(4, "u8")], None)]),
        wire.encode_frame("abort", "s", 2, reason="why"),
        wire.encode_frame("bye", "s", 0),
    ]
    ok = bad = 0
    for _ in range(10_000):
        body = bytearray(rnd.choice(seeds)[wire.HEADER.size :])
        op = rnd.randrange(4)
        if op == 0:
            for _ in range(rnd.randint(1, 4)):
                body[rnd.randrange(len(body))] ^= 1 << rnd.randrange(8)
        elif op == 1:
            body = body[: rnd.randrange(len(body))]
        elif op == 2:
            other = rnd.choice(seeds)[wire.HEADER.size :]
            body = body[: rnd.randrange(len(body))] + other[rnd.randrange(len(other)) :]
        else:
            body[rnd.randrange(len(body))] = rnd.randrange(256)
        try:
            wire.decode_body(bytes(body))
            ok += 1
        except FrameError:
            bad += 1
    assert ok + bad == 10_000 and bad > 5_000
