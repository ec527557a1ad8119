"""Demo programs: run with ``secformer demo`` or ``secformer-party --program secformer.demo:mlp``."""

from __future__ import annotations

from typing import Any

import numpy as np

from secformer.session import Session

MLP_SHAPES = {"x": (4, 16), "w1": (16, 32), "w2": (32, 4)}


def mlp_inputs(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """P0 (model owner) holds the weights, P1 (client) holds the input rows."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, MLP_SHAPES["w1"])
    w2 = rng.normal(0, 0.3, MLP_SHAPES["w2"])
    x = rng.normal(0, 1, MLP_SHAPES["x"])
    return {"w1": w1, "w2": w2}, {"x": x}


def mlp_plain(w1: np.ndarray, w2: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w1, 0) @ w2


async def mlp(sess: Session, inputs: dict[str, Any]) -> Any:
    """relu(x @ W1) @ W2 with secret weights (P0) and secret input (P1); only P1 learns it."""
    w1 = sess.input(0, inputs.get("w1"), MLP_SHAPES["w1"])
    w2 = sess.input(0, inputs.get("w2"), MLP_SHAPES["w2"])
    x = sess.input(1, inputs.get("x"), MLP_SHAPES["x"])
    y = (x @ w1).relu() @ w2
    return await sess.reveal(y, to=1)
