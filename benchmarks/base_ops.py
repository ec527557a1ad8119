"""Base protocols at BERT-base shapes on three processes: time, bytes, rounds, error.

    python -m benchmarks.base_ops [--profiles none,lan,wan] [--ops mul,ltz]

Each op runs in its own session of three OS processes (dealer, P0, P1) on this machine, twice:
once with material requested on demand (dealer generation and traffic on the critical path),
then again as an *online* run whose material was prefetched in one batch (offline phase).
Times are measured inside the parties around the op alone (inputs already shared). Next to the
online time: the analytic estimate compute + rounds x latency + bytes / bandwidth.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import machine, today
from benchmarks.programs import OPS, make_inputs
from netsim import load_profile
from secformer.launch import run_processes


def run(op: str, profile: str) -> dict:
    in0, in1 = make_inputs(op)
    r = run_processes("benchmarks.programs:bench_op", in0, in1, netsim=profile, timeout=1800)
    d0, d1 = r.outputs[0], r.outputs[1]
    plain = OPS[op][3](in0["a"], in1["b"])
    err = float(np.max(np.abs(d0["result"] - plain)))
    p = load_profile(profile)
    online = d0["online_bytes_sent"] + d1["online_bytes_sent"]
    per_dir = max(d0["online_bytes_sent"], d1["online_bytes_sent"])
    compute = max(d0["compute_time"], d1["compute_time"])
    analytic = compute + p.estimate(d0["rounds"], per_dir)
    od0, od1 = d0["on_demand"], d1["on_demand"]
    return {
        "op": op,
        "profile": profile,
        "time": max(d0["time"], d1["time"]),
        "analytic": analytic,
        "online_MB": online / 1e6,
        "dealer_MB": od1["dealer_bytes_recv"] / 1e6,
        "rounds": d0["rounds"],
        "err": err,
        "compute": compute,
        "on_demand": max(od0["time"], od1["time"]),
        "offline": max(d0["offline_time"], d1["offline_time"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", default="none,lan,wan")
    ap.add_argument("--ops", default=",".join(OPS))
    a = ap.parse_args()
    ops = [o for o in OPS if any(o.startswith(s.strip()) for s in a.ops.split(","))]
    print(f"# base ops, {today()}\n# machine: {machine()}\n# command: python -m benchmarks.base_ops\n")
    print(
        "| op | profile | online time (s) | analytic (s) | compute (s) | on-demand time (s) | offline (s) "
        "| online MB | dealer MB | rounds | max abs err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for op in ops:
        for prof in a.profiles.split(","):
            r = run(op, prof)
            print(
                f"| {r['op']} | {r['profile']} | {r['time']:.3f} | {r['analytic']:.3f} | {r['compute']:.3f} "
                f"| {r['on_demand']:.3f} | {r['offline']:.3f} "
                f"| {r['online_MB']:.2f} | {r['dealer_MB']:.2f} | {r['rounds']} | {r['err']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
