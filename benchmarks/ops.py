"""SecFormer's non-linear protocols vs the baselines at BERT shapes, on three processes.

    python -m benchmarks.ops [--profiles lan,wan] [--models base,large] [--ops gelu,softmax]

Shapes (batch 1, seq 128): BERT-base GeLU [128, 3072], LayerNorm [128, 768], Softmax
[12, 128, 128]; BERT-large GeLU [128, 4096], LayerNorm [128, 1024], Softmax [16, 128, 128].
Each op runs as its own session of dealer, P0 and P1 (separate OS processes, loopback TCP,
netsim on every link). Online time is measured after the op's material was prefetched.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import machine, today
from benchmarks.programs import _nl_registry
from benchmarks.shapes import SHAPES, nl_inputs, nl_reference
from netsim import load_profile
from secformer.launch import run_processes


def run(name: str, model: str, profile: str) -> dict:
    kind = name.split("/")[0]
    shape = SHAPES[model][kind]
    inp = nl_inputs({"gelu": "gelu", "layernorm": "ln", "softmax": "softmax"}[kind], shape)
    in0 = {**inp, "op": np.array(name), "shape": np.array(shape)}
    in1 = {"op": np.array(name), "shape": np.array(shape)}
    r = run_processes("benchmarks.programs:bench_nonlinear", in0, in1, netsim=profile, timeout=3600)
    d0, d1 = r.outputs[0], r.outputs[1]
    err = np.abs(d1["result"] - nl_reference(name, inp))
    p = load_profile(profile)
    per_dir = max(d0["online_bytes_sent"], d1["online_bytes_sent"])
    compute = max(d0["compute_time"], d1["compute_time"])
    return {
        "time": max(d0["time"], d1["time"]),
        "analytic": compute + p.estimate(d0["rounds"], per_dir),
        "online_MB": (d0["online_bytes_sent"] + d1["online_bytes_sent"]) / 1e6,
        "dealer_MB": d1["on_demand"]["dealer_bytes_recv"] / 1e6,
        "rounds": d0["rounds"],
        "max_err": float(err.max()),
        "mean_err": float(err.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", default="lan,wan")
    ap.add_argument("--models", default="base,large")
    ap.add_argument("--ops", default="gelu,layernorm,softmax")
    a = ap.parse_args()
    print(f"# non-linear ops, {today()}\n# machine: {machine()}\n# command: python -m benchmarks.ops\n")
    print(
        "| model | op | protocol | profile | online time (s) | analytic (s) | vs SecFormer | online MB "
        "| dealer MB | rounds | max abs err | mean abs err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    names = list(_nl_registry())
    for model in a.models.split(","):
        for kind in a.ops.split(","):
            for prof in a.profiles.split(","):
                base_time = None
                for name in [n for n in names if n.startswith(kind + "/")]:
                    r = run(name, model, prof)
                    if base_time is None:
                        base_time = r["time"]
                    ratio = r["time"] / base_time
                    print(
                        f"| {model} | {kind} {list(SHAPES[model][kind])} | {name.split('/')[1]} | {prof} "
                        f"| {r['time']:.3f} | {r['analytic']:.3f} | {ratio:.2f}x | {r['online_MB']:.2f} "
                        f"| {r['dealer_MB']:.2f} | {r['rounds']} | {r['max_err']:.1e} | {r['mean_err']:.1e} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
