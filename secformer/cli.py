"""``secformer`` command: ``secformer demo`` runs a private computation on three local processes."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def demo(args: argparse.Namespace) -> int:
    from secformer.demo import mlp_inputs, mlp_plain
    from secformer.launch import ProcessFailedError, run_processes

    in0, in1 = mlp_inputs(args.seed)
    print("secformer demo: P0 (model owner) holds a 2-layer MLP, P1 (client) holds 4 input rows.")
    print("Starting dealer, P1 and P0 as three processes on loopback ...", flush=True)
    t0 = time.perf_counter()
    try:
        run = run_processes("secformer.demo:mlp", in0, in1, netsim=args.netsim, timeout=args.timeout)
    except ProcessFailedError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        for name, text in exc.stderr.items():
            if text.strip():
                print(f"--- {name} ---\n{text.strip()}", file=sys.stderr)
        return 1
    y = run.outputs[1]
    ref = mlp_plain(in0["w1"], in0["w2"], in1["x"])
    np.set_printoptions(precision=4, suppress=True)
    print(f"P1 learns relu(x @ W1) @ W2 =\n{y}")
    print(f"P0 learns: {run.outputs[0]}")
    print(f"max |private - plaintext| = {np.max(np.abs(y - ref)):.2e}")
    print(run.report())
    print(f"(wall time including process start-up and JIT cache load: {time.perf_counter() - t0:.2f} s)")
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="secformer", description="Private Transformer inference over MPC")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="private inference demo on three local processes")
    d.add_argument("--netsim", default=None, help="none | lan | wan | path.toml")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--timeout", type=float, default=600.0)
    d.set_defaults(fn=demo)
    args = p.parse_args(argv)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
