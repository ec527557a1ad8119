"""SPU 0.9.5 with PUMA's settings on one BERT-base encoder layer and its non-linear ops.

Runs in SPU's own environment (``python -m benchmarks.vs_peers --setup`` makes it):

    .venv-peers/spu/bin/python -m benchmarks.peers.spu_bench --what layer

PUMA's settings: the ABY3 protocol (three parties, replicated secret sharing: no offline phase,
so all its time is online), ring Z_2^64 with 18 fraction bits, the compiler's
``enable_optimize_denominator_with_broadcast``, and PUMA's GeLU (piecewise polynomial on
[-4, -1.95, 3]) and softmax (exp of x - max with exp clipped below -14), written here in jax
from the PUMA paper's formulas. SPU's in-process simulator runs the three parties as threads of
one process with in-memory links: no serialisation, no TCP, no network shaping, which favours
SPU against our three processes on loopback TCP. Prints one JSON line: the second call's time
(the first compiles), and the max abs error against the float64 reference.
"""

from __future__ import annotations

import math
import time

import numpy as np

from benchmarks.peers import workload
from benchmarks.peers.workload import op_inputs


def _puma_gelu(jnp, x):
    a = (-0.5054031199708174, -0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
    b = (0.008526321541038084, 0.5, 0.3603292692789629, -0.037688200365904236, 0.0018067462606141187)
    x2 = x * x
    x3, x4 = x * x2, x2 * x2
    x6 = x3 * x3
    lo = a[3] * x3 + a[2] * x2 + a[1] * x + a[0]
    mid = b[4] * x6 + b[3] * x4 + b[2] * x2 + b[1] * x + b[0]
    b0, b1, b2 = x < -4.0, x < -1.95, x > 3.0
    return b2 * x + (b0 ^ b1) * lo + (b1 ^ b2 ^ True) * mid


def _puma_softmax(jnp, x):
    x = x - jnp.max(x, axis=-1, keepdims=True)
    e = jnp.exp(x) * (x > -14)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _layernorm(jnp, x, g, b):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    d = x - mu
    var = jnp.mean(d * d, axis=-1, keepdims=True)
    return d * jax_rsqrt(jnp, var + 1e-5) * g + b


def jax_rsqrt(jnp, v):
    import jax

    return jax.lax.rsqrt(v)


def _layer(jnp, p, heads=12):
    x = p["x"]
    L, H = x.shape
    d = H // heads

    def split(t):
        return t.reshape(L, heads, d).transpose(1, 0, 2)

    q, k, v = (split(x @ p[f"w{n}"] + p[f"b{n}"]) for n in "qkv")
    s = jnp.matmul(q, k.transpose(0, 2, 1)) / math.sqrt(d)
    ctx = jnp.matmul(_puma_softmax(jnp, s), v)
    a = ctx.transpose(1, 0, 2).reshape(L, H) @ p["wo"] + p["bo"]
    h = _layernorm(jnp, x + a, p["ln1_g"], p["ln1_b"])
    f = _puma_gelu(jnp, h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return _layernorm(jnp, h + f, p["ln2_g"], p["ln2_b"])


def bench(what: str) -> dict:
    import jax.numpy as jnp
    import spu.libspu as libspu
    import spu.utils.simulation as sim

    cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.ABY3, field=libspu.FieldType.FM64)
    cfg.fxp_fraction_bits = 18
    copts = libspu.CompilerOptions()
    copts.enable_optimize_denominator_with_broadcast = True
    simulator = sim.Simulator(3, cfg)
    fns = {
        "layer": lambda p: _layer(jnp, p),
        "gelu": lambda x: _puma_gelu(jnp, x),
        "layernorm": lambda x, g, b: _layernorm(jnp, x, g, b),
        "softmax": lambda x: _puma_softmax(jnp, x),
    }
    inp, ref = op_inputs(what)
    fn = sim.sim_jax(simulator, fns[what], copts=copts)
    args = (inp,) if what == "layer" else tuple(inp[k] for k in ("x", "g", "b") if k in inp)
    fn(*args)  # compiles
    t0 = time.perf_counter()
    out = np.asarray(fn(*args), dtype=np.float64)
    elapsed = time.perf_counter() - t0
    return {"peer": "spu", "what": what, "time": elapsed, "max_err": float(np.abs(out - ref).max())}


if __name__ == "__main__":
    workload.main(bench)
