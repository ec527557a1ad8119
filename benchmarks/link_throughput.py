"""Our links' one-way throughput between two party processes on loopback (framing, wire format
and receive path included), next to the raw stream's (benchmarks/tls_throughput.py).

    python -m benchmarks.link_throughput [--mb 64] [--count 16] [--transport insecure,tls]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import machine, today
from secformer import launch
from secformer.launch import run_processes


def run(mb: float, count: int, tls: bool) -> float:
    inputs = {"mb": np.array(mb), "count": np.array(count)}
    cfg = launch.local_cluster(netsim="none", insecure=not tls)
    r = run_processes("benchmarks.programs:bulk_transfer", inputs, inputs, cfg=cfg, timeout=1200)
    o = r.outputs[0]
    return o["bytes"] / o["seconds"] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=64.0, help="MB per message (one frame)")
    ap.add_argument("--count", type=int, default=16, help="messages")
    ap.add_argument("--transport", default="insecure,tls")
    a = ap.parse_args()
    print(f"# link throughput, {today()}\n# machine: {machine()}")
    print(f"# command: python -m benchmarks.link_throughput --mb {a.mb} --count {a.count}\n")
    print("| transport | message MB | MB/s |\n|---|---|---|")
    for t in a.transport.split(","):
        print(f"| {t} | {a.mb:g} | {run(a.mb, a.count, t == 'tls'):.0f} |", flush=True)


if __name__ == "__main__":
    main()
