"""CrypTen's own GeLU, LayerNorm and Softmax on the shapes of benchmarks/ops.py, same machine.

Runs in a separate environment (CrypTen 0.4.1 cannot share ours: it pins old packages):

    python -m venv .venv-crypten
    .venv-crypten/bin/pip install torch==2.13.0
    .venv-crypten/bin/pip install --no-deps crypten==0.4.1
    .venv-crypten/bin/pip install pyyaml omegaconf onnx scipy pandas
    .venv-crypten/bin/python -m benchmarks.vs_crypten

``pip install crypten`` with dependencies fails: it requires the retired ``sklearn`` package name
and a torchvision that does not load beside torch 2.13. CrypTen's ONNX converter imports
``torch.onnx._internal.registration.registry``, removed from torch; it is stubbed below (the
converter is not used here; CrypTen's MPC code is unchanged).

Two parties plus CrypTen's trusted third party (cfg.mpc.provider = "TTP"), communicating through
torch.distributed (gloo) on loopback, so no network shaping: next to the measured time we give
the analytic lan/wan time compute + rounds x latency + bytes / bandwidth from CrypTen's own
communication counters (rounds and bytes per party).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types

import numpy as np

from benchmarks.shapes import SHAPES, nl_inputs, nl_reference

LAN = (0.0001, 10e9 / 8)
WAN = (0.020, 100e6 / 8)


def _stub_onnx_registry() -> None:
    m = types.ModuleType("torch.onnx._internal.registration")
    m.registry = types.SimpleNamespace(is_registered_op=lambda *a, **k: False, all_functions=lambda: [])
    m.onnx_symbolic = lambda *a, **k: lambda f: f
    sys.modules.setdefault("torch.onnx._internal.registration", m)


def _op(kind: str, x, inp):  # x: an MPCTensor
    import crypten  # noqa: F401

    if kind == "gelu":
        return x * ((x * (1 / math.sqrt(2))).erf() + 1) * 0.5
    if kind == "layernorm":
        mu = x.mean(dim=-1, keepdim=True)
        d = x - mu
        var = (d * d).mean(dim=-1, keepdim=True)
        y = d.div((var + 1e-5).sqrt())
        return y * inp["gamma_t"] + inp["beta_t"]
    return x.softmax(dim=-1)


def bench(kind: str, shape: tuple[int, ...]) -> dict:
    import crypten
    import crypten.communicator as comm
    import torch
    from crypten import mpc

    inp = nl_inputs({"gelu": "gelu", "layernorm": "ln", "softmax": "softmax"}[kind], shape)

    @mpc.run_multiprocess(world_size=2)
    def party():
        crypten.init()
        crypten.cfg.communicator.verbose = True  # CrypTen counts rounds and bytes only when verbose
        torch.set_num_threads(1)
        x = crypten.cryptensor(torch.tensor(inp["x"], dtype=torch.float32), src=0)
        extra = {}
        if kind == "layernorm":
            extra = {
                "gamma_t": crypten.cryptensor(torch.tensor(inp["gamma"], dtype=torch.float32), src=0),
                "beta_t": crypten.cryptensor(torch.tensor(inp["beta"], dtype=torch.float32), src=0),
            }
        comm.get().reset_communication_stats()
        t0 = time.perf_counter()
        y = _op(kind, x, extra)
        elapsed = time.perf_counter() - t0
        stats = comm.get().get_communication_stats()
        out = y.get_plain_text().numpy().astype(np.float64)
        # only scalars go back: run_multiprocess joins before draining its queue, so a large
        # return value deadlocks on a full pipe
        err = float(np.nanmax(np.abs(out - nl_reference(kind, inp))))
        return elapsed, stats["rounds"], stats["bytes"], stats["time"], err

    res = party()
    elapsed = max(r[0] for r in res)
    rounds = max(r[1] for r in res)
    nbytes = sum(r[2] for r in res)
    comm_time = max(r[3] for r in res)
    err = max(r[4] for r in res)
    compute = max(0.0, elapsed - comm_time)
    per_dir = nbytes / 2
    return {
        "time": elapsed,
        "rounds": rounds,
        "MB": nbytes / 1e6,
        "max_err": err,
        "lan": compute + rounds * LAN[0] + per_dir / LAN[1],
        "wan": compute + rounds * WAN[0] + per_dir / WAN[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="base,large")
    ap.add_argument("--ops", default="gelu,layernorm,softmax")
    a = ap.parse_args()
    _stub_onnx_registry()
    import crypten

    crypten.cfg.mpc.provider = "TTP"
    print(
        "| model | op | CrypTen time, loopback (s) | analytic lan (s) | analytic wan (s) | bytes (MB) | rounds "
        "| max abs err |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        for kind in a.ops.split(","):
            shape = SHAPES[model][kind]
            r = bench(kind, shape)
            print(
                f"| {model} | {kind} {list(shape)} | {r['time']:.3f} | {r['lan']:.3f} | {r['wan']:.3f} "
                f"| {r['MB']:.2f} | {r['rounds']} | {r['max_err']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
