"""Shapes, input distributions and float64 references shared by our benchmarks and
the peers' scripts in ``benchmarks/peers`` (pure numpy)."""

from __future__ import annotations

import math

import numpy as np

SHAPES = {
    "base": {"gelu": (128, 3072), "layernorm": (128, 768), "softmax": (12, 128, 128)},
    "large": {"gelu": (128, 4096), "layernorm": (128, 1024), "softmax": (16, 128, 128)},
}


def nl_inputs(kind: str, shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """BERT-like inputs: FFN pre-activations N(-0.5, 2) within [-10, 10]; LayerNorm rows with
    standard deviations log-uniform in [0.3, 10] and offsets; attention scores N(0, 3) in [-15, 15]."""
    rng = np.random.default_rng(seed)
    if kind == "gelu":
        return {"x": rng.normal(-0.5, 2.0, shape).clip(-10, 10)}
    if kind == "ln":
        std = np.exp(rng.uniform(np.log(0.3), np.log(10.0), (*shape[:-1], 1)))
        return {
            "x": rng.normal(0, 1, shape) * std + rng.normal(0, 0.5, (*shape[:-1], 1)),
            "gamma": rng.normal(1, 0.1, shape[-1]),
            "beta": rng.normal(0, 0.1, shape[-1]),
        }
    return {"x": rng.normal(0, 3, shape).clip(-15, 15)}


def nl_reference(name: str, inp: dict[str, np.ndarray]) -> np.ndarray:
    x = inp["x"]
    kind = name.split("/")[0]
    if kind == "gelu":
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    if kind == "layernorm":
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True)) * inp["gamma"] + inp["beta"]
    if "2quad" in name:  # the model is changed: compare with the function it computes
        q = (x + 5) ** 2
        return q / q.sum(-1, keepdims=True)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
