"""Programs the tests run on P0, P1 and the dealer (importable by the party processes)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from secformer.session import Session

SHAPES = {"a": (64, 32), "b": (64, 32), "w": (32, 16), "c": (2000,)}
W_PUBLIC = np.linspace(-1, 1, 32 * 8).reshape(32, 8)
RING_EDGES = np.array(
    [0, 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, 2**62, 2**64 - 2**62, 12345, 2**64 - 12345],
    dtype=np.uint64,
)


def ops_inputs(seed: int = 1) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-4, 4, SHAPES["a"])
    w = rng.uniform(-1, 1, SHAPES["w"])
    b = rng.uniform(-4, 4, SHAPES["b"])
    c = np.concatenate(
        [
            [0.0, 2.0**-16, -(2.0**-16), 1.0, -1.0, 30000.0, -30000.0, 32768.0, -32768.0, 0.5],
            rng.uniform(-100, 100, 990),
            rng.uniform(-(2.0**-10), 2.0**-10, 1000),
        ]
    )
    return {"a": a, "w": w}, {"b": b, "c": c}


async def ops(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """Every base operation once; all results revealed to both parties."""
    a = sess.input(0, inputs.get("a"), SHAPES["a"])
    w = sess.input(0, inputs.get("w"), SHAPES["w"])
    b = sess.input(1, inputs.get("b"), SHAPES["b"])
    c = sess.input(1, inputs.get("c"), SHAPES["c"])
    zero = sess.input(0, np.zeros(RING_EDGES.shape) if sess.party == 0 else None, RING_EDGES.shape)
    edges = sess.local(lambda z: z + (RING_EDGES if sess.party == 0 else 0), RING_EDGES.shape, zero)
    from secformer.protocols import base

    out = {
        "add": a + b,
        "sub": a - b,
        "neg": -a,
        "mul": a * b,
        "square": a.square(),
        "matmul": a @ w,
        "batched_matmul": a.reshape(4, 16, 32) @ w,
        "pub_mul": a * 0.37,
        "pub_div": a / 3.0,
        "pub_add": a + 2.5,
        "rsub": 1.0 - a,
        "int_mul": a * 3,
        "pub_matmul": a @ W_PUBLIC,
        "pub_rmatmul": W_PUBLIC.T @ a.T,
        "sum": a.sum(axis=1),
        "mean": a.mean(axis=0),
        "transpose": a.T,
        "slice": a[2:5, ::2],
        "ltz": c < 0,
        "sign": c.sign(),
        "gt": c > 0.5,
        "relu": c.relu(),
        "lt": a < b,
        "edges_ltz": sess.protocol(base.ltz, RING_EDGES.shape, edges),
    }
    names = list(out)
    vals = await asyncio.gather(*(sess.reveal(out[n]) for n in names))
    res = dict(zip(names, vals, strict=True))
    res["edges_ltz"] = vals[names.index("edges_ltz")] * sess.fx.scale  # integer-scale bits
    res["mul_to_p1"] = await sess.reveal(a * b, to=1)
    res["stats"] = sess.stats()
    return res


async def long_loop(sess: Session, inputs: dict[str, Any]) -> Any:
    """Many sequential rounds with on-demand dealer material (for kill tests)."""
    x = sess.input(0, np.full((256,), 0.5) if sess.party == 0 else None, (256,))
    marker = os.environ.get("SECFORMER_TEST_MARKER")
    for i in range(100_000):
        x = x * 1.0001 + 0.0
        x = (x * x) * 0.5 + 0.25
        if i % 10 == 0:
            await x.share()
            if marker and i == 20:
                Path(f"{marker}.{sess.party}").write_text("running")
            await asyncio.sleep(0.01)
    return await sess.reveal(x)


async def shape_mismatch(sess: Session, inputs: dict[str, Any]) -> Any:
    """P1 declares a shape that differs from P0's actual input."""
    x = sess.input(0, np.ones((3, 4)) if sess.party == 0 else None, (3, 4) if sess.party == 0 else (4, 3))
    return await sess.reveal(x)


async def out_of_range(sess: Session, inputs: dict[str, Any]) -> Any:
    x = sess.input(0, np.array([1.0, 1e9]) if sess.party == 0 else None, (2,))
    return await sess.reveal(x)


async def other_program(sess: Session, inputs: dict[str, Any]) -> Any:
    return 42


async def two_queries(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """Query 0 on demand, then query 1 with all its material prefetched (offline phase)."""
    w = sess.input(0, inputs.get("w"), (16, 8))

    async def query(x_val: np.ndarray | None) -> Any:
        x = sess.input(1, x_val, (4, 16))
        return await sess.reveal((x @ w).relu(), to=1)

    y0 = await sess.run_query(0, query, inputs.get("x0"))
    plan = sess.plan(0)
    before = sess.stats()
    await sess.prefetch(plan, 1)  # offline: returns once the dealer's batch has arrived
    mid = sess.stats()
    y1 = await sess.run_query(1, query, inputs.get("x1"))
    after = sess.stats()
    return {"y0": y0, "y1": y1, "plan": plan, "before": before, "mid": mid, "after": after}


# --------------------------------------------------------------------------- non-linear protocols


def nonlinear_inputs(seed: int = 2) -> dict[str, np.ndarray]:
    """Inputs on the ranges real BERT activations take (docs/PROTOCOLS.md: GeLU inputs within
    about [-10, 10], LayerNorm row variances 1e-2..1e3, attention scores within about [-15, 15])."""
    rng = np.random.default_rng(seed)
    gelu_x = np.concatenate([np.linspace(-10, 10, 2001), [0.0, 4.5, -4.5, 4.0, -4.0, 300.0, -300.0]])
    ln_x = np.concatenate([rng.normal(rng.uniform(-1, 1), s, (2, 768)) for s in (0.1, 0.5, 1, 3, 10, 30)])
    scores = rng.normal(0, 3, (2, 4, 16, 32)).clip(-15, 15)
    return {
        "gelu": gelu_x,
        "ln": ln_x,
        "ln_ok": ln_x[:10],  # std 0.1 .. 10: inside CrypTen's LayerNorm range (variance < 320)
        "gamma": rng.normal(1, 0.2, 768),
        "beta": rng.normal(0, 0.2, 768),
        "scores": scores,
    }


LN_EPS = 0.05  # far above GPT-2's 1e-5, so that leaving it out would show on the std-0.1 rows
SCORE_MASK = np.ones((2, 1, 1, 32))
SCORE_MASK[1, ..., 21:] = 0  # the second sequence is padded after 21 tokens


async def nonlinear(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """Every non-linear protocol once, each timed for rounds, all revealed to both parties."""
    from secformer.protocols import base as B
    from secformer.protocols import crypten as C
    from secformer.protocols import mpcformer as M
    from secformer.protocols import puma as P
    from secformer.protocols import secformer as S

    shapes = {k: v.shape for k, v in nonlinear_inputs().items()}
    t = {k: sess.input(0, inputs.get(k), shapes[k]) for k in shapes}
    for v in t.values():
        await v.share()
    m = SCORE_MASK
    ops = {
        "gelu_secformer": (S.gelu_secformer, ["gelu"]),
        "gelu_secformer_double": (lambda rt, a: S.gelu_secformer(rt, a, double=True), ["gelu"]),
        "gelu_secformer_erf": (S.gelu_secformer_erf, ["gelu"]),
        "tanh_fourier": (S.tanh_fourier, ["gelu"]),
        "gelu_puma": (P.gelu_puma, ["gelu"]),
        "gelu_crypten": (C.gelu_crypten, ["gelu"]),
        "gelu_crypten_tanh": (C.gelu_crypten_tanh, ["gelu"]),
        "gelu_quad": (M.gelu_quad, ["gelu"]),
        "layernorm_secformer": (S.layernorm_secformer, ["ln", "gamma", "beta"]),
        "layernorm_crypten": (C.layernorm_crypten, ["ln_ok", "gamma", "beta"]),
        "layernorm_crypten_all": (C.layernorm_crypten, ["ln", "gamma", "beta"]),  # std 30 rows: out of range
        "layernorm_secformer_eps": (lambda rt, *a: S.layernorm_secformer(rt, *a, eps=LN_EPS), ["ln", "gamma", "beta"]),
        "softmax_2quad": (lambda rt, a: S.softmax_2quad(rt, a, m), ["scores"]),
        "softmax_2quad_newton": (lambda rt, a: M.softmax_2quad_newton(rt, a, m), ["scores"]),
        "softmax_crypten": (lambda rt, a: C.softmax_crypten(rt, a, m), ["scores"]),
        "softmax_puma": (lambda rt, a: P.softmax_puma(rt, a, m), ["scores"]),
        "argmax": (B.argmax, ["scores"]),
    }
    only = os.environ.get("SECFORMER_TEST_OPS") or inputs.get("only")
    if only:
        ops = {k: v for k, v in ops.items() if k in str(only).split(",")}
    else:
        del ops["layernorm_crypten_all"]
    out: dict[str, Any] = {"bytes_sent": {}}
    for name, (fn, args) in ops.items():
        r0, b0 = sess.stats()["rounds"], sess.stats()["online_bytes_sent"]
        shape = shapes[args[0]][:-1] if name == "argmax" else shapes[args[0]]
        y = sess.protocol(fn, shape, *[t[a] for a in args])
        await y.share()
        rounds = sess.stats()["rounds"] - r0
        out["bytes_sent"][name] = sess.stats()["online_bytes_sent"] - b0  # this party's, framing included
        out[name] = (await sess.reveal(y), rounds)
    return out


# --------------------------------------------------------------------------- models


async def model_queries(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """Load a HF model directory once, then run the given token ids as queries (no tokenizer).

    ``reveal`` (both parties, comma-separated) names the outputs P1 learns; this test program
    calls the backend directly, so the model owner's output policy of ``infer`` is not applied."""
    from secformer.material import PRESPLIT_MEMORY
    from secformer.models.hf import load_spec, load_weights
    from secformer.models.private import load_model, private_forward
    from secformer.protocols import linear

    d, mode = str(inputs["model"]), str(inputs["mode"])
    spec = load_spec(d)
    w = load_weights(d, spec)[1] if sess.party == 0 else None
    model = await load_model(sess, spec, w, float(inputs.get("memory_budget", PRESPLIT_MEMORY)))
    del w  # P0's plaintext weights are not needed after loading
    ids = np.asarray(inputs["ids"]) if sess.party == 1 else None
    masks = np.asarray(inputs["masks"])
    out = []
    offline = bool(inputs.get("offline", False))
    stream = bool(inputs.get("stream", False))
    for q in range(masks.shape[0]):
        offline_time, offline_bytes = None, 0
        if offline and q > 0:  # same shapes as query 0: fetch all of query q's material first
            t0 = time.perf_counter()
            await sess.prefetch(sess.plan(0), q)
            linear.precompute_owner(sess.rt.provider, {pw.key: pw for pw in model.matrices.values()})
            offline_bytes = await linear.send_truncation_parts(sess.rt)
            await sess.barrier()
            offline_time = time.perf_counter() - t0
        elif stream and q > 0:  # same shapes as query 0: its material streams ahead of use
            sess.stream(sess.plan(0), q)
        reveal = tuple(str(inputs["reveal"]).split(",")) if "reveal" in inputs else None
        prof = None
        if inputs.get("cprofile") and q == masks.shape[0] - 1:  # this role's CPU, by function, last query
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        res = await sess.run_query(
            q, private_forward, sess, model, None if ids is None else ids[q], masks[q], mode, reveal
        )
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.path.join(str(inputs["cprofile"]), f"P{sess.party}.prof"))
        if offline_time is not None:
            res["stats"]["offline_time"] = offline_time
            res["stats"]["offline_bytes"] = offline_bytes
        out.append(res)
    return {"results": out, "load": model.load_stats}


async def streamed_queries(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """Query 0 on demand; queries 1 and 2 with query 0's plan streamed (window ``windows[q-1]``
    bytes). With ``wrong_plan``, query 1 streams a plan of other shapes (must be refused)."""
    w = sess.input(0, inputs.get("w"), (16, 8))
    xs = inputs.get("xs")
    windows = [float(v) for v in inputs["windows"]]

    async def query(x_val: np.ndarray | None, rows: int) -> Any:
        x = sess.input(1, x_val, (rows, 16))
        h = (x @ w).relu()
        return await sess.reveal((h * h + h).relu(), to=1)

    stats = [sess.stats()]
    out = [await sess.run_query(0, query, None if xs is None else xs[0], 4)]
    stats.append(sess.stats())
    for q in (1, 2):
        plan = sess.plan(0)
        if inputs.get("wrong_plan", False):
            plan = [
                (k, kind, {**spec, "shape": [3, *spec["shape"][1:]]} if "shape" in spec else spec)
                for k, kind, spec in plan
            ]
        sess.stream(plan, q, windows[q - 1])
        out.append(await sess.run_query(q, query, None if xs is None else xs[q], 4))
        stats.append(sess.stats())
    return {"y": out, "stats": stats}


async def under_fire(sess: Session, inputs: dict[str, Any]) -> Any:
    """A few seconds of products while a fuzzer hits the listeners; sets ``inputs["up"]``
    (an in-process asyncio.Event) once the session's links are established."""
    x = sess.input(0, inputs.get("x"), (64,))
    y = sess.input(1, inputs.get("y"), (64,))
    await x.share()
    if "up" in inputs:
        inputs["up"].set()
    acc = x * y
    for _ in range(int(inputs.get("rounds", 60))):
        acc = acc * 0.5 + x * y * 0.5
        await acc.share()
        await asyncio.sleep(0.03)
    return await sess.reveal(acc)


async def _owner_weight(sess: Session, w: np.ndarray | None, shape: tuple[int, int] = (16, 8)) -> Any:
    """The model owner's (P0's) weight ``w``, masked once for the owner's linear layers."""
    from secformer.protocols import linear

    plain = sess.fx.encode(w) if w is not None else None
    return await sess.protocol(linear.prepare_weight, shape, sess.input(0, w, shape), plain=plain)._task


async def owner_precomputed(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """x @ W with the owner's weight: query 0 on demand; query 1 prefetched with P1's A F
    computed offline (returns how many products were precomputed, and both results to P1)."""
    from secformer.protocols import linear

    pw = await _owner_weight(sess, inputs.get("w"))
    x = sess.input(1, inputs.get("x"), (4, 16))
    await x.share()

    async def one() -> Any:
        y = sess.protocol(linear.matmul_owner, (4, 8), x, pw=pw)
        return await sess.reveal(y, to=1)

    s0 = sess.stats()
    y0 = await sess.run_query(0, one)
    s1 = sess.stats()
    await sess.prefetch(sess.plan(0), 1)
    n = linear.precompute_owner(sess.rt.provider, {pw.key: pw})
    parts = await linear.send_truncation_parts(sess.rt) if inputs.get("parts", True) else 0
    await sess.barrier()
    s2 = sess.stats()
    y1 = await sess.run_query(1, one)
    s3 = sess.stats()
    sent = [b["online_bytes_sent"] - a["online_bytes_sent"] for a, b in ((s0, s1), (s2, s3))]
    return {"y0": y0, "y1": y1, "precomputed": n, "parts": parts, "sent": sent}


async def offline_then_query(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """Query 0 on demand, then query 1 after an offline phase (Session.offline) and a barrier."""
    w = sess.input(0, inputs.get("w"), (16, 8))

    async def query(x_val: np.ndarray | None) -> Any:
        x = sess.input(1, x_val, (4, 16))
        return await sess.reveal((x @ w).relu(), to=1)

    y0 = await sess.run_query(0, query, inputs.get("x0"))
    seconds = await sess.offline(sess.plan(0), 1)
    await sess.barrier()
    y1 = await sess.run_query(1, query, inputs.get("x1"))
    return {"y0": y0, "y1": y1, "offline": seconds}


async def busy_then_reply(sess: Session, inputs: dict[str, Any]) -> Any:
    """P1 works alone for ``seconds`` (saying it is busy), then asks P0, who replies 0.3 s later:
    P1's wait for the reply starts after its work, long after P0's last message."""
    await sess.barrier()
    if sess.party == 1:
        await sess._alive_while(asyncio.sleep(float(inputs["seconds"])))
    got = await sess.rt.transfer(1, [np.arange(3, dtype=np.uint64)] if sess.party == 1 else None)
    if sess.party == 0:
        await asyncio.sleep(0.3)  # P0 takes a moment to answer
    back = await sess.rt.transfer(0, [got[0] + np.uint64(1)] if sess.party == 0 else None)
    return None if back is None else back[0].tolist()


async def owner_linear_costs(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    """x @ W with the owner's weight, x given doubled (extra=1): the result, its rounds and the
    bytes each party sent for it (category "probe")."""
    from secformer.protocols import linear

    pw = await _owner_weight(sess, inputs.get("w"))
    x = sess.input(1, inputs.get("x"), (32, 16))
    await x.share()
    y = sess.protocol(linear.matmul_owner, (32, 8), x, pw=pw, extra=1, category="probe")
    await y.share()
    st = sess.stats()
    return {"y": await sess.reveal(y), "rounds": st["rounds"], "bytes": st["by_category"]["probe"]["bytes"]}
