"""A model server and a dealer service that stay up and answer many clients' sessions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from secformer.client import AsyncClient, Client, SessionClosedError
from secformer.dealer import DealerService
from secformer.errors import PeerError, SecformerError
from secformer.launch import local_cluster
from secformer.models.forward import plain_forward
from secformer.models.hf import load_weights
from secformer.models.program import tokenize
from secformer.server import ModelServer
from secformer.tls import tls_config_for
from tests.tinybert import make_tiny_bert

BOUND = 5e-3  # private embedding vs the float64 runner of the same mode (fixed point, 16 bits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # peaked attention (init_std 0.2): a wrong attention scale changes the embedding measurably
    return make_tiny_bert(tmp_path_factory.mktemp("serve") / "tiny", layers=2, hidden=64, seed=3, init_std=0.2)


async def plain_embeddings(model: Path, texts: list[str], mode: str = "secformer") -> np.ndarray:
    spec, w = load_weights(model)
    ids, masks = tokenize(str(model), texts)
    outs = [await plain_forward(spec, w, i, m, mode) for i, m in zip(ids, masks, strict=True)]
    return np.stack([np.ravel(o["embedding"]) for o in outs])


async def start(model: Path, tmp: Path, **kw):  # type: ignore[no-untyped-def]
    cfg = local_cluster(session="svc", connect_timeout=10.0)
    dealer = DealerService(cfg)
    await dealer.start()
    server = ModelServer(cfg, str(model), **kw)
    await server.start()
    return cfg, dealer, server


async def test_sessions_are_independent_and_reuse_their_masked_model(tiny: Path, tmp_path: Path) -> None:
    cfg, dealer, server = await start(tiny, tmp_path, max_sessions=3)
    texts = ["A man is eating food.", "The cat sat on the mat", "Hello"]
    ref = await plain_embeddings(tiny, texts)
    try:
        a, b = AsyncClient(cfg, cache_dir=tmp_path), AsyncClient(cfg, cache_dir=tmp_path)
        await asyncio.gather(a.connect(), b.connect())
        ea, eb = await asyncio.gather(a.embed(texts[:2]), b.embed(texts[1:]))
        assert np.abs(ea - ref[:2]).max() < BOUND
        assert np.abs(eb - ref[1:]).max() < BOUND
        again = await a.embed(texts[:1])  # a later batch of the same session: no new masking
        assert np.abs(again[0] - ref[0]).max() < BOUND
        st = server.status()
        assert sorted(s["queries"] for s in st["sessions"]) == [2, 3]
        assert all(s["state"] == "idle" for s in st["sessions"])
        await asyncio.gather(a.close(), b.close())
        for _ in range(50):
            if not server.sessions and not dealer.running:
                break
            await asyncio.sleep(0.05)
        assert server.status()["totals"]["ended"] == 2 and server.status()["totals"]["failed"] == 0
        assert len(server.limbs) > 0  # P0's encoded weights were kept for the next session
        with pytest.raises(SessionClosedError):
            await a.embed(texts[:1])
    finally:
        server.close()
        dealer.close()


async def test_server_refuses_beyond_its_limits_with_the_reason(tiny: Path, tmp_path: Path) -> None:
    cfg, dealer, server = await start(tiny, tmp_path, max_sessions=1, max_len=8)
    try:
        async with AsyncClient(cfg, cache_dir=tmp_path) as a:
            with pytest.raises(PeerError, match="full"):
                await AsyncClient(cfg, cache_dir=tmp_path).connect()
            with pytest.raises(PeerError, match="mode"):  # a mismatch is named even when full
                await AsyncClient(cfg, cache_dir=tmp_path, mode="puma").connect()
            res = await a.query(["a b c d e f g h i j k l m n o p"])  # cut to the server's 8 tokens
            assert res[0]["tokens"] > 8 and res[0]["outputs"]["embedding"].size == 64
        assert server.status()["totals"]["refused"] == 2
    finally:
        server.close()
        dealer.close()


async def test_client_quota_holds_across_sessions(tiny: Path, tmp_path: Path) -> None:
    """A new session does not reset what a client has learned: the quota counts per client."""
    cfg, dealer, server = await start(tiny, tmp_path, client_quota=2)
    try:
        async with AsyncClient(cfg, cache_dir=tmp_path) as a:
            await a.embed(["one"])
        async with AsyncClient(cfg, cache_dir=tmp_path) as b:
            with pytest.raises(SecformerError):  # 2 texts, 1 left
                await b.embed(["two", "three"])
        for _ in range(50):
            if not server.sessions:
                break
            await asyncio.sleep(0.05)
        async with AsyncClient(cfg, cache_dir=tmp_path) as c:
            await c.embed(["four"])
        with pytest.raises(PeerError, match="quota"):
            await AsyncClient(cfg, cache_dir=tmp_path).connect()
    finally:
        server.close()
        dealer.close()


async def test_a_failing_client_ends_only_its_own_session(tiny: Path, tmp_path: Path) -> None:
    """A client whose request breaks the server's limits is refused; its session ends, not the server."""
    cfg, dealer, server = await start(tiny, tmp_path, max_sessions=2, max_len=8)
    try:
        bad = AsyncClient(cfg, cache_dir=tmp_path)
        await bad.connect()
        bad.info["max_len"] = 64  # lie to ourselves: send texts longer than the server allows
        with pytest.raises(SecformerError):
            await bad.query(["a b c d e f g h i j k l m n o p"])
        async with AsyncClient(cfg, cache_dir=tmp_path) as good:
            e = await good.embed(["Hello"])
        assert np.abs(e - await plain_embeddings(tiny, ["Hello"])).max() < BOUND
        assert server.status()["totals"]["failed"] == 1
    finally:
        server.close()
        dealer.close()


async def test_drain_finishes_the_running_batch_and_tells_idle_clients(tiny: Path, tmp_path: Path) -> None:
    cfg, dealer, server = await start(tiny, tmp_path)
    try:
        idle, busy = AsyncClient(cfg, cache_dir=tmp_path), AsyncClient(cfg, cache_dir=tmp_path)
        await asyncio.gather(idle.connect(), busy.connect())
        batch = asyncio.ensure_future(busy.embed(["one two three"] * 4))
        while not any(s["state"] == "query" for s in server.status()["sessions"]):
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await server.drain(timeout=60)
        assert time.monotonic() - t0 < 60
        assert (await batch).shape == (4, 64)  # the running batch finished
        with pytest.raises(SecformerError, match="shutting down"):
            await idle.embed(["too late"])
        with pytest.raises(PeerError, match="shutting down"):
            await AsyncClient(cfg, cache_dir=tmp_path).connect()
        assert server.status()["totals"]["failed"] == 0
    finally:
        server.close()
        dealer.close()


async def test_a_client_gets_a_clear_error_when_the_server_goes_away(tiny: Path, tmp_path: Path) -> None:
    cfg, dealer, server = await start(tiny, tmp_path)
    try:
        c = AsyncClient(cfg, cache_dir=tmp_path)
        await c.connect()
        server.close()
        for s in list(server.sessions.values()):
            for ln in s["links"]:
                ln.writer.transport.abort()  # as if the process died: the connection resets
        t0 = time.monotonic()
        with pytest.raises(SecformerError):
            await c.embed(["hello"])
        assert time.monotonic() - t0 < 10
    finally:
        dealer.close()


def _tiny_gpt2(path: Path) -> Path:
    """A GPT-2 LM with random weights and a small word-level tokenizer of its own (no download)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "and", "then"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=len(words), n_positions=32)).save_pretrained(
        path
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


async def test_generate_next_returns_the_private_argmax_of_a_served_language_model(tmp_path: Path) -> None:
    from secformer.models.forward import plain_forward

    model = _tiny_gpt2(tmp_path / "gpt2")
    cfg, dealer, server = await start(model, tmp_path)
    try:
        async with AsyncClient(cfg, cache_dir=tmp_path) as c:
            tok, word = await c.generate_next("the cat sat on")
            with pytest.raises(ValueError, match="embeddings"):
                await c.embed(["the cat"])
        spec, w = load_weights(model)
        ids = np.array([1, 2, 3, 4])
        logits = np.ravel((await plain_forward(spec, w, ids, np.ones(4), "secformer"))["logits"][-1])
        assert logits[tok] > logits.max() - 1e-2  # the argmax, up to fixed-point ties
        assert word == ["[UNK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "and", "then"][tok]
    finally:
        server.close()
        dealer.close()


async def test_garbage_on_the_servers_port_is_refused_and_the_server_goes_on(tiny: Path, tmp_path: Path) -> None:
    cfg, dealer, server = await start(tiny, tmp_path)
    try:
        ep = cfg.endpoints[0]
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 64, bytes(range(256))):
            r, w = await asyncio.open_connection(ep.host, ep.port)
            w.write(junk)
            await w.drain()
            await asyncio.wait_for(r.read(), 15)  # the server closes it
            w.close()
        async with AsyncClient(cfg, cache_dir=tmp_path) as c:
            e = await c.embed(["Hello"])
        assert np.abs(e - await plain_embeddings(tiny, ["Hello"])).max() < BOUND
        assert server.acceptor is not None and server.acceptor.refused == 3
    finally:
        server.close()
        dealer.close()


# ---------------------------------------------------------------------------- processes


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    with log.open("wb") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _status(conf: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "secformer.cli", "status", "--config", str(conf)], capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout)


def test_server_and_dealer_outlive_clients_over_processes(tiny: Path, tmp_path: Path) -> None:
    """Server and dealer started once; two concurrent clients, one killed mid-query, then a fourth:
    survivors equal the plaintext run, and both services are still up and drain with exit 0."""
    from secformer.tls import issue_client, keygen

    certs = tmp_path / "certs"
    keygen(certs, days=1)
    for name in ("alice", "bob", "mallory", "dave"):
        issue_client(certs, name, days=1)
    cfg = local_cluster(session="svc", connect_timeout=20.0)
    cfg.tls = tls_config_for(certs)
    conf = tmp_path / "cluster.toml"
    conf.write_text(cfg.to_toml())
    for name in ("alice", "bob", "mallory", "dave"):
        text = conf.read_text().replace("{role}.pem", f"client-{name}.pem").replace("{role}.key", f"client-{name}.key")
        (tmp_path / f"{name}.toml").write_text(text)
    dealer = _spawn([sys.executable, "-m", "parties.dealer", "--config", str(conf), "--serve"], tmp_path / "d.log")
    server = _spawn(
        [sys.executable, "-m", "secformer.cli", "serve", "--config", str(conf), "--model", str(tiny)],
        tmp_path / "s.log",
    )
    procs = [dealer, server]
    texts = ["A man is eating food.", "The cat sat on the mat", "Private inference"]
    ref = asyncio.run(plain_embeddings(tiny, texts))
    env = {**os.environ, "SECFORMER_CACHE": str(tmp_path / "cache"), "OPENBLAS_NUM_THREADS": "1"}

    def query(name: str, ts: list[str], out: Path) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "secformer.cli", "query", "--config", str(tmp_path / f"{name}.toml")]
        args += [a for t in ts for a in ("--text", t)] + ["--output", str(out)]
        with (tmp_path / f"{name}.log").open("wb") as fh:
            return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)

    try:
        deadline = time.monotonic() + 60
        while True:  # the server listens once its weights are loaded
            try:
                _status(conf)
                break
            except AssertionError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "s.log").read_text()
                time.sleep(0.5)
        a = query("alice", texts[:2], tmp_path / "a.jsonl")
        b = query("bob", texts[1:], tmp_path / "b.jsonl")
        m = query("mallory", texts * 3, tmp_path / "m.jsonl")
        while not any(s["client"] == "mallory" and s["state"] == "query" for s in _status(conf)["sessions"]):
            assert m.poll() is None, (tmp_path / "mallory.log").read_text()
            time.sleep(0.2)
        m.send_signal(signal.SIGKILL)  # mid-query
        assert a.wait(120) == 0, (tmp_path / "alice.log").read_text()
        assert b.wait(120) == 0, (tmp_path / "bob.log").read_text()
        for out, rows in ((tmp_path / "a.jsonl", ref[:2]), (tmp_path / "b.jsonl", ref[1:])):
            got = np.array([json.loads(ln)["embedding"] for ln in out.read_text().splitlines()]).reshape(len(rows), -1)
            assert np.abs(got - rows).max() < BOUND
        d = query("dave", texts[:1], tmp_path / "d.jsonl")
        assert d.wait(120) == 0, (tmp_path / "dave.log").read_text()
        got = np.array(json.loads((tmp_path / "d.jsonl").read_text())["embedding"]).reshape(-1)
        assert np.abs(got - ref[0]).max() < BOUND
        assert server.poll() is None and dealer.poll() is None
        totals = _status(conf)["totals"]
        assert totals["sessions"] == 4 and totals["failed"] == 1 and totals["ended"] == 3, totals
        assert "mallory" in (tmp_path / "s.log").read_text()  # the failed session is logged by client name
        server.send_signal(signal.SIGTERM)
        dealer.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0 and dealer.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


async def test_python_client_is_synchronous_over_a_background_loop(tiny: Path, tmp_path: Path) -> None:
    """``Client`` from ordinary (blocking) code: embed, a refused call, close."""
    cfg, dealer, server = await start(tiny, tmp_path)

    def use() -> np.ndarray:
        with Client(cfg, cache_dir=tmp_path) as c:
            e = c.embed(["Hello"])
            with pytest.raises(ValueError, match="not a classifier"):
                c.classify(["Hello"])
            return e

    try:
        e = await asyncio.to_thread(use)
        assert np.abs(e - await plain_embeddings(tiny, ["Hello"])).max() < BOUND
    finally:
        server.close()
        dealer.close()
