"""Fidelity of every approximation mode on all-MiniLM-L6-v2 (real weights), privately.

    python -m benchmarks.fidelity --modes crypten,puma,secformer
    python -m benchmarks.fidelity --modes crypten --texts-file secformer/distill/sample/wordnet_sample.txt --n 40

Six sentences (or the first ``--n`` lines of ``--texts-file``) run as queries over three
processes (dealer, P0, P1; loopback TCP, TLS). Per sentence: the private sentence embedding's
cosine to the original HF model's, and the MPC error (max abs difference of the last hidden
state from the plaintext runner with the same approximations). Results in docs/ACCURACY.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, today
from secformer.launch import local_cluster, run_processes
from secformer.models.forward import run_plain
from secformer.models.hf import default_model_dir, load_weights
from secformer.models.program import tokenize

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Secure multi-party computation lets two parties compute on secrets.",
    "I love pizza!",
    "What is the capital of France?",
    "The stock market fell sharply on Monday after the announcement of new tariffs on steel and aluminium imports.",
]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="crypten,puma,secformer")
    ap.add_argument("--texts-file", default=None, help="one text per line (default: six sentences)")
    ap.add_argument("--n", type=int, default=6, help="how many lines of --texts-file")
    ap.add_argument("--summary", action="store_true", help="one line per mode: min/max over the texts")
    a = ap.parse_args()
    texts = TEXTS
    if a.texts_file:
        with open(a.texts_file, encoding="utf-8") as fh:
            texts = [ln.strip() for ln in fh if ln.strip()][: a.n]
    model = str(default_model_dir())
    spec, w = load_weights(model)
    ids, masks = tokenize(model, texts)
    print(f"# fidelity on all-MiniLM-L6-v2, {today()}\n# machine: {machine()}\n")
    print(
        "| mode | sentence | tokens | cosine to HF (private) | cosine (plaintext, same approx.) | MPC error | rounds |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in a.modes.split(","):
        t0 = time.perf_counter()
        inputs = {"model": np.array(model), "mode": np.array(mode)}
        r = run_processes(  # the MPC error is measured on the last hidden state: enabled by the model owner
            "secformer.models.program:infer",
            {**inputs, "unsafe_reveal": np.array("hidden")},
            {**inputs, "texts": np.array(texts), "reveal": np.array("embedding,hidden")},
            cfg=local_cluster(),
        )
        rows = []
        for k, res in enumerate(r.outputs[1]["results"]):
            ref = run_plain(spec, w, ids[k], masks[k], mode)
            exact = run_plain(spec, w, ids[k], masks[k], "exact")
            err = np.abs(res["outputs"]["hidden"] - ref["hidden"]).max()
            c = cos(res["outputs"]["embedding"][0], exact["embedding"][0])
            c_plain = cos(ref["embedding"][0], exact["embedding"][0])
            rows.append((c, c_plain, err, res["stats"]["rounds"], len(ids[k])))
            if not a.summary:
                print(f"| {mode} | {k} | {len(ids[k])} | {c:.4f} | {c_plain:.4f} | {err:.1e} | {rows[-1][3]} |")
        if a.summary:
            c, cp, e, rd, n = (np.array(x) for x in zip(*rows, strict=True))
            print(
                f"| {mode} | {len(rows)} texts | {n.min()}–{n.max()} | {c.min():.4f}–{c.max():.4f} | "
                f"{cp.min():.4f}–{cp.max():.4f} | {e.min():.1e}–{e.max():.1e} | {rd.min()}–{rd.max()} |"
            )
        print(f"<!-- {mode}: {time.perf_counter() - t0:.1f} s -->", flush=True)


if __name__ == "__main__":
    main()
