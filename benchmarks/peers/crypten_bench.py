"""CrypTen 0.4.1 with its trusted third party (TTP) on one BERT-base encoder layer and its ops.

Runs in CrypTen's own environment (``python -m benchmarks.vs_peers --setup`` makes it):

    .venv-peers/crypten/bin/python -m benchmarks.peers.crypten_bench --what layer

Two parties and CrypTen's TTP (``cfg.mpc.provider = "TTP"``: every Beaver triple and mask is
made by the TTP process when a party asks, so the dealer is on the critical path, as in our
on-demand run), three processes talking through torch.distributed (gloo) on loopback. The
model owner's weights are encrypted from party 0, the activations from party 1; GeLU is
CrypTen's erf, LayerNorm its reciprocal square root, softmax its own. Prints one JSON line:
time (slowest party), rounds and bytes (CrypTen's counters, both parties), max abs error
against the float64 reference.

CrypTen's dependencies do not install from PyPI any more (the retired ``sklearn`` name, a
torchvision that does not load beside torch 2.13), so it is installed without them, and its
ONNX converter's import of a module removed from torch is stubbed (the converter is not used).
"""

from __future__ import annotations

import math
import sys
import time
import types

import numpy as np

from benchmarks.peers import workload
from benchmarks.peers.workload import op_inputs


def _stub_onnx_registry() -> None:
    m = types.ModuleType("torch.onnx._internal.registration")
    m.registry = types.SimpleNamespace(is_registered_op=lambda *a, **k: False, all_functions=lambda: [])
    m.onnx_symbolic = lambda *a, **k: lambda f: f
    sys.modules.setdefault("torch.onnx._internal.registration", m)


def _gelu(x):
    return x * ((x * (1 / math.sqrt(2))).erf() + 1) * 0.5


def _layernorm(x, g, b):
    mu = x.mean(dim=-1, keepdim=True)
    d = x - mu
    var = (d * d).mean(dim=-1, keepdim=True)
    return d * (var + 1e-5).inv_sqrt() * g + b


def _layer(p, heads=12):
    x = p["x"]
    L, H = x.shape
    d = H // heads

    def split(t):
        return t.reshape(L, heads, d).transpose(0, 1)

    q, k, v = (split(x.matmul(p[f"w{n}"]) + p[f"b{n}"]) for n in "qkv")
    s = q.matmul(k.transpose(1, 2)) * (1 / math.sqrt(d))
    ctx = s.softmax(dim=-1).matmul(v)
    a = ctx.transpose(0, 1).reshape(L, H).matmul(p["wo"]) + p["bo"]
    h = _layernorm(x + a, p["ln1_g"], p["ln1_b"])
    f = _gelu(h.matmul(p["w1"]) + p["b1"]).matmul(p["w2"]) + p["b2"]
    return _layernorm(h + f, p["ln2_g"], p["ln2_b"])


def bench(what: str) -> dict:
    _stub_onnx_registry()
    import crypten
    import crypten.communicator as comm
    import torch
    from crypten import mpc

    crypten.cfg.mpc.provider = "TTP"
    inp, ref = op_inputs(what)

    @mpc.run_multiprocess(world_size=2)
    def party():
        crypten.init()
        crypten.cfg.communicator.verbose = True  # CrypTen counts rounds and bytes only when verbose
        torch.set_num_threads(1)
        enc = {
            k: crypten.cryptensor(torch.tensor(v, dtype=torch.float32), src=1 if k == "x" else 0)
            for k, v in inp.items()
        }

        def run():
            if what == "layer":
                return _layer(enc)
            if what == "gelu":
                return _gelu(enc["x"])
            if what == "layernorm":
                return _layernorm(enc["x"], enc["g"], enc["b"])
            return enc["x"].softmax(dim=-1)

        run()  # warm-up, as ours and SPU's first calls are not timed
        comm.get().reset_communication_stats()
        t0 = time.perf_counter()
        y = run()  # CrypTen is eager: the result exists when the call returns
        elapsed = time.perf_counter() - t0
        stats = comm.get().get_communication_stats()
        out = y.get_plain_text().numpy().astype(np.float64)
        # only scalars go back: run_multiprocess joins before draining its queue
        return elapsed, stats["rounds"], stats["bytes"], float(np.nanmax(np.abs(out - ref)))

    res = party()
    return {
        "peer": "crypten",
        "what": what,
        "time": max(r[0] for r in res),
        "rounds": max(r[1] for r in res),
        "MB": sum(r[2] for r in res) / 1e6,
        "max_err": max(r[3] for r in res),
    }


if __name__ == "__main__":
    workload.main(bench)
