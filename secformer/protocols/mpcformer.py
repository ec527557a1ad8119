"""MPCFormer's approximations (Li et al. 2023): Quad GeLU and 2Quad softmax with CrypTen's
Newton reciprocal, as baselines in this runtime."""

from __future__ import annotations

import numpy as np

from secformer.protocols.base import add_public, mul, mul_const, square, truncate
from secformer.protocols.crypten import RECIPROCAL_MAX, below_bound, reciprocal_newton
from secformer.runtime import Later, gather


def _enc(rt, v: float) -> np.uint64:
    return np.int64(round(v * rt.fx.scale)).view(np.uint64)


async def gelu_quad(rt, x: np.ndarray) -> np.ndarray:
    """Quad = 0.125 x^2 + 0.25 x + 0.5 (MPCFormer). Rounds: 1. Bytes: 8 per element.
    Not an approximation of GeLU in value (error grows like x^2/8); the model is distilled to it."""
    x2_8, x_4 = await gather(square(rt, x, extra=3), truncate(rt, x, 2))  # x^2/8 and x/4 by truncation
    return add_public(rt, x2_8 + x_4, np.full(x.shape, _enc(rt, 0.5)))


async def softmax_2quad_newton(rt, x: np.ndarray, mask: np.ndarray | None = None, c: float = 5.0) -> np.ndarray:
    """(x + c)^2 / sum (x + c)^2 with CrypTen's Newton reciprocal (MPCFormer).

    CrypTen's reciprocal converges for inputs in about [0.1, 100], while 2Quad row sums are about
    25 L; dividing the *mean* (sum / L, public L) brings them into range (on the raw sum the
    iteration diverges: measured error 4e9). Rounds: 1 + 28 + 1 = 30."""
    L = x.shape[-1]
    q = await square(rt, add_public(rt, x, np.full(x.shape, _enc(rt, c))))
    if mask is not None:
        q = q * np.asarray(mask).astype(np.uint64)
    mean = await mul_const(rt, q.sum(axis=-1, keepdims=True, dtype=np.uint64), 1.0 / L)
    rt.expect_all(Later(below_bound(rt, mean, RECIPROCAL_MAX)), f"2Quad row mean < {RECIPROCAL_MAX:g}")
    inv = await reciprocal_newton(rt, mean, lazy=True)
    return await mul_const(rt, await mul(rt, q, inv, trunc=False), 1.0 / L * 2.0**-rt.fx.frac_bits)
