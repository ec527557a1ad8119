"""What every framework runs: one BERT-base encoder layer and its non-linear ops at BERT-base
shapes, their inputs and float64 references (pure numpy, so it imports in any framework's
environment), and the command line each peer script shares."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import numpy as np

SHAPES = {"gelu": (128, 3072), "layernorm": (128, 768), "softmax": (12, 128, 128)}


def layer_inputs(seed: int = 0, hidden: int = 768, ffn: int = 3072, seq: int = 128) -> dict[str, np.ndarray]:
    """BERT-like scales: activations N(0, 1), weights N(0, 0.02) (BERT's init), LayerNorm near 1/0."""
    rng = np.random.default_rng(seed)
    shapes = {"wq": (hidden, hidden), "wk": (hidden, hidden), "wv": (hidden, hidden), "wo": (hidden, hidden)}
    shapes |= {"w1": (hidden, ffn), "w2": (ffn, hidden)}
    p = {k: rng.normal(0, 0.02, s) for k, s in shapes.items()}
    for b, n in (("bq", hidden), ("bk", hidden), ("bv", hidden), ("bo", hidden), ("b1", ffn), ("b2", hidden)):
        p[b] = rng.normal(0, 0.02, n)
    for ln in ("ln1", "ln2"):
        p[f"{ln}_g"] = rng.normal(1, 0.05, hidden)
        p[f"{ln}_b"] = rng.normal(0, 0.05, hidden)
    p["x"] = rng.normal(0, 1, (seq, hidden))
    return p


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-12) * g + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def layer_reference(p: dict[str, np.ndarray], heads: int = 12) -> np.ndarray:
    """Post-LN BERT encoder layer, float64, exact GeLU and softmax."""
    x = p["x"]
    L, H = x.shape
    d = H // heads

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(L, heads, d).transpose(1, 0, 2)

    q, k, v = (split(x @ p[f"w{n}"] + p[f"b{n}"]) for n in "qkv")
    s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    e = np.exp(s - s.max(-1, keepdims=True))
    ctx = (e / e.sum(-1, keepdims=True)) @ v
    a = ctx.transpose(1, 0, 2).reshape(L, H) @ p["wo"] + p["bo"]
    h = _ln(x + a, p["ln1_g"], p["ln1_b"])
    f = _gelu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return _ln(h + f, p["ln2_g"], p["ln2_b"])


def op_inputs(what: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Inputs of one op (or the layer) on BERT's ranges, and the float64 reference output."""
    rng = np.random.default_rng(0)
    if what == "layer":
        p = layer_inputs()
        return p, layer_reference(p)
    shape = SHAPES[what]
    if what == "gelu":
        x = rng.normal(-0.5, 2.0, shape).clip(-10, 10)
        return {"x": x}, _gelu(x)
    if what == "layernorm":
        std = np.exp(rng.uniform(np.log(0.3), np.log(10.0), (shape[0], 1)))
        x = rng.normal(0, 1, shape) * std
        g, b = rng.normal(1, 0.1, shape[-1]), rng.normal(0, 0.1, shape[-1])
        return {"x": x, "g": g, "b": b}, (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True)) * g + b
    x = rng.normal(0, 3, shape).clip(-15, 15)
    e = np.exp(x - x.max(-1, keepdims=True))
    return {"x": x}, e / e.sum(-1, keepdims=True)


def main(bench: Callable[[str], dict]) -> None:
    """``--what layer|gelu|layernorm|softmax``: print the peer's result as one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", default="layer", choices=("layer", *SHAPES))
    print(json.dumps(bench(ap.parse_args().what)), flush=True)
