"""SecFormer against real CrypTen 0.4.1 (TTP) and real SPU 0.9.5 (PUMA), interleaved in one run.

    python -m benchmarks.vs_peers --setup          # makes .venv-peers/{crypten,spu} from PyPI
    python -m benchmarks.vs_peers --rounds 3       # or: tox -e peers

Each round runs, for one BERT-base encoder layer (seq 128) and each non-linear op at BERT-base
shapes, ours, then CrypTen, then SPU, so that the machine's load falls on all of them alike; the
ratios are taken within a round. Like is paired with like:

- ours **on demand** (the dealer generates each request when P1 asks: on the critical path)
  against CrypTen with its TTP (which does the same);
- ours **online** (the query's material fetched beforehand, the offline phase) against SPU's
  ABY3, which has no offline phase: all of its time is online.

Ours: dealer, P0 and P1 as three processes on loopback TCP, plaintext (the peers use no TLS),
no network shaping (the peers have none), one BLAS thread each. Our layer is the second layer of
a 2-layer BERT-base with random weights (its time alone, from the model's per-layer timer), in
``secformer`` mode and in ``puma`` mode (PUMA's approximations on our protocols). CrypTen: two
parties and its TTP as three processes (gloo). SPU: its simulator, three parties as threads of
one process with in-memory links (no serialisation, no TCP: this favours SPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, today

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venv-peers"
PEERS = {
    "crypten": [
        ["torch==2.13.0"],
        ["--no-deps", "crypten==0.4.1"],
        ["pyyaml", "omegaconf", "onnx", "scipy", "pandas"],
    ],
    "spu": [["spu==0.9.5"]],
}
OPS = {
    "gelu": ["gelu/secformer"],
    "layernorm": ["layernorm/secformer"],
    "softmax": ["softmax/secformer-2quad", "softmax/puma"],
}


def setup() -> None:
    """One virtual environment per peer, from PyPI (CrypTen's without its stale dependencies)."""
    for peer, steps in PEERS.items():
        env = VENVS / peer
        if not (env / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        for args in steps:
            subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True)
        print(f"{peer}: {env}")


def peer(name: str, what: str) -> dict:
    py = VENVS / name / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} is missing: run python -m benchmarks.vs_peers --setup first")
    r = subprocess.run(
        [str(py), "-m", f"benchmarks.peers.{name}_bench", "--what", what],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{name} {what} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[-1])


def _cluster():
    from secformer import launch

    return launch.local_cluster(netsim="none", insecure=True)


def our_layer(mode: str, root: Path) -> dict:
    """Layer 2 of a 2-layer BERT-base: query 0 on demand, query 1 with its material prefetched."""
    from benchmarks.bert import CONFIGS
    from secformer.launch import run_processes

    d = root / "bert-base-2layers"
    if not (d / "config.json").exists():
        import torch
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        BertModel(BertConfig(**{**CONFIGS["base"], "num_hidden_layers": 2})).eval().save_pretrained(d)
    ids = np.random.default_rng(1).integers(1000, 29000, (2, 128))
    common = {"model": np.array(str(d)), "mode": np.array(mode), "offline": np.array(True), "masks": np.ones((2, 128))}
    r = run_processes("tests.programs:model_queries", common, {**common, "ids": ids}, cfg=_cluster(), timeout=3600)
    res = r.outputs[1]["results"]
    return {"on_demand": res[0]["stats"]["layer_times"][1], "online": res[1]["stats"]["layer_times"][1]}


def our_op(name: str) -> dict:
    from benchmarks.shapes import SHAPES, nl_inputs
    from secformer.launch import run_processes

    kind = name.split("/")[0]
    shape = SHAPES["base"][kind]
    inp = nl_inputs({"gelu": "gelu", "layernorm": "ln", "softmax": "softmax"}[kind], shape)
    in0 = {**inp, "op": np.array(name), "shape": np.array(shape)}
    in1 = {"op": np.array(name), "shape": np.array(shape)}
    r = run_processes("benchmarks.programs:bench_nonlinear", in0, in1, cfg=_cluster(), timeout=3600)
    d0, d1 = r.outputs[0], r.outputs[1]
    return {
        "on_demand": max(d0["on_demand"]["time"], d1["on_demand"]["time"]),
        "online": max(d0["time"], d1["time"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", action="store_true", help="create the peers' environments and exit")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--what", default="layer,gelu,layernorm,softmax", help="layer and/or ops")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "secformer-bench-models"))
    ap.add_argument("--json", default=None, help="append raw results here")
    a = ap.parse_args()
    if a.setup:
        setup()
        return
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"# ours vs CrypTen 0.4.1 (TTP) and SPU 0.9.5 (PUMA, ABY3), {today()}\n# machine: {machine()}")
    print(f"# command: python -m benchmarks.vs_peers --rounds {a.rounds} --what {a.what}\n")
    print(
        "| round | what | ours on demand (s) | CrypTen TTP (s) | CrypTen / ours | ours online (s) | SPU PUMA (s) "
        "| SPU / ours | CrypTen err | SPU err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rnd in range(1, a.rounds + 1):
        for what in a.what.split(","):
            t0 = time.perf_counter()
            if what == "layer":
                ours = {f"{m} layer": our_layer(m, root) for m in ("secformer", "puma")}
            else:
                ours = {n: our_op(n) for n in OPS[what]}
            c, s = peer("crypten", what), peer("spu", what)
            for name, o in ours.items():
                print(
                    f"| {rnd} | {name} | {o['on_demand']:.3f} | {c['time']:.3f} | {c['time'] / o['on_demand']:.1f}x "
                    f"| {o['online']:.3f} | {s['time']:.3f} | {s['time'] / o['online']:.1f}x "
                    f"| {c['max_err']:.1e} | {s['max_err']:.1e} |",
                    flush=True,
                )
            if a.json:
                with open(a.json, "a") as f:
                    rec = {"round": rnd, "what": what, "ours": ours, "crypten": c, "spu": s}
                    f.write(json.dumps({**rec, "wall": time.perf_counter() - t0}) + "\n")


if __name__ == "__main__":
    main()
