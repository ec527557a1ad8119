"""CrypTen's approximations (facebookresearch/CrypTen, functions/approximations.py), as baselines
in this runtime: same ring, same dealer, same comparison. Defaults follow CrypTen's config.

Differences from CrypTen itself: comparisons are this runtime's exact 8-round LTZ (CrypTen's
A2B path is slower), and max(a, b) fuses its select into the comparison. Both favour the
baseline, so SecFormer's measured advantage here is a lower bound.
"""

from __future__ import annotations

import math

import numpy as np

from secformer.protocols.base import (
    Raw,
    add_public,
    lincomb_const,
    ltz,
    ltz_mul,
    mul,
    mul_const,
    raw_rsub,
    settle,
    square,
)
from secformer.runtime import Later, gather

#: Iteration counts. CrypTen's config exposes them (``functions.sqrt_nr_iters``; the sigmoid's exp
#: iterations are fixed at 9 inside ``sigmoid``). CrypTen's defaults (3 and 9) do not cover the
#: ranges of real BERT models (all-MiniLM-L6-v2: LayerNorm variances 0.004..129, GeLU inputs up
#: to 24.6): with them, its sentence embeddings reach cosine 0.93-0.97 to the original model.
#: These values cover variances 0.003..320 and GeLU inputs below 30.6 (cosine 1.000); see
#: docs/ACCURACY.md. The algorithms are CrypTen's.
INV_SQRT_ITERATIONS = 8
SIGMOID_EXP_ITERATIONS = 10
INV_SQRT_MAX = 320.0  # inv_sqrt_newton's range with 8 iterations: x in [0.0028, 320]
RECIPROCAL_MAX = 100.0  # reciprocal_newton's range: x in about [0.1, 100]


def _const(rt, v: float, shape: tuple[int, ...]) -> np.ndarray:
    enc = np.asarray(np.int64(round(v * rt.fx.scale))).view(np.uint64)
    return add_public(rt, np.zeros(shape, np.uint64), np.broadcast_to(enc, shape))


def _plus(rt, x: np.ndarray, v: float) -> np.ndarray:
    return x + _const(rt, v, x.shape)


async def exp_limit(rt, x: np.ndarray, iterations: int = 8, lazy: bool = False) -> np.ndarray | Raw:
    """exp(x) ~ (1 + x / 2^n)^(2^n) (CrypTen, n = 8). Rounds: n (+1 unless ``lazy``).
    Bytes: 8 n per element. 1 + x/2^n and every square stay :class:`Raw`, each truncated by the
    next square's opening. Valid for x > -2^n (below, 1 + x/2^n <= 0 and the result is
    garbage); relative error grows like x^2 / 2^(n+1)."""
    y: np.ndarray | Raw = raw_rsub(rt, 1.0, Raw(np.uint64(0) - x, iterations))  # 1 + x / 2^n
    for _ in range(iterations):
        y = await square(rt, y, lazy=True)
    return y if lazy else await settle(rt, y)


async def reciprocal_newton(rt, x: np.ndarray, iterations: int = 10, lazy: bool = False) -> np.ndarray | Raw:
    """1/x by Newton y <- y (2 - x y) from y0 = 3 exp(1 - 2x) + 0.003 (CrypTen, positive x).
    Rounds: 9 + 2 x iterations (+1 unless ``lazy``) = 30. Converges for x in about [0.1, 100]."""
    e = await exp_limit(rt, _plus(rt, np.uint64(0) - np.uint64(2) * x, 1.0))  # 1 - 2x: exact
    y: np.ndarray | Raw = _plus(rt, np.uint64(3) * e, 0.003)
    for _ in range(iterations):
        xy = await mul(rt, x, y, lazy=True)
        y = await mul(rt, y, raw_rsub(rt, 2.0, xy), lazy=True)
    return y if lazy else await settle(rt, y)


async def inv_sqrt_newton(
    rt, x: np.ndarray, iterations: int = INV_SQRT_ITERATIONS, lazy: bool = False
) -> np.ndarray | Raw:
    """1/sqrt(x) by Newton y <- y (3 - x y^2) / 2 from y0 = 2.2 exp(-(x/2 + 0.2)) + 0.2 - x/1024
    (CrypTen). Rounds: 8 + 3 x iterations = 32. Relative error < 1e-3 for x in [0.0028, 320]
    with 8 iterations (CrypTen's default 3: [0.13, 320]); the exp fails for x > 511."""
    e = await exp_limit(rt, _plus(rt, await mul_const(rt, x, -0.5), -0.2))
    y = await lincomb_const(rt, [(e, 2.2), (x, -1.0 / 1024)], const=0.2)
    for _ in range(iterations):
        y2 = await square(rt, y, lazy=True)
        xy2 = await mul(rt, x, y2, lazy=True)
        y = await mul(rt, y, raw_rsub(rt, 3.0, xy2), extra=1, lazy=True)  # the /2 rides in the truncation
    return y if lazy else await settle(rt, y)


async def max_tree(rt, x: np.ndarray) -> np.ndarray:
    """Max over the last axis by a pairwise tree (CrypTen's log_reduction), keepdims.
    max(a, b) = a + [a - b < 0](b - a), select fused into the comparison.
    Rounds: 8 ceil(log2 L). Bytes: ~40 per element per level (halving)."""
    while x.shape[-1] > 1:
        n = x.shape[-1]
        if n % 2:
            x = np.concatenate([x, x[..., -1:]], axis=-1)  # duplicate the last: max unchanged
            n += 1
        a, b = x[..., : n // 2], x[..., n // 2 :]
        _, sel = await ltz_mul(rt, np.ascontiguousarray(a - b), np.ascontiguousarray(b - a))
        x = a + sel
    return x


async def softmax_crypten(rt, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """exp(x - max) / sum (CrypTen): max tree, exp by the limit, reciprocal by Newton.
    A public mask multiplies the exponentials (dropped positions weigh exactly 0).
    Rounds: 8 log2(L) + 8 + 28 + 1 (L = 128: 93)."""
    m = await max_tree(rt, x)
    num = await exp_limit(rt, x - m)
    if mask is not None:
        num = num * np.asarray(mask).astype(np.uint64)
    inv = await reciprocal_newton(rt, num.sum(axis=-1, keepdims=True, dtype=np.uint64))
    return await mul(rt, num, inv)


async def layernorm_crypten(
    rt, x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None, eps: float = 0.0
) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) gamma + beta with CrypTen's sqrt (x inv_sqrt(x)) and
    reciprocal (Newton). Rounds: 1 + 32 + 1 + 28 + 1 (+1 with gamma) = 63-64."""
    n = x.shape[-1]
    mu = await mul_const(rt, x.sum(axis=-1, keepdims=True, dtype=np.uint64), 1.0 / n)
    d = x - mu
    v = await mul_const(rt, (await square(rt, d)).sum(axis=-1, keepdims=True, dtype=np.uint64), 1.0 / n)
    v = _plus(rt, v, max(eps, 2.0**-16))  # eps, at least the fixed-point resolution (1e-12 would vanish)
    # the documented range of inv_sqrt_newton (exp by the limit fails beyond): checked beside it
    rt.expect_all(Later(below_bound(rt, v, INV_SQRT_MAX)), f"row variance < {INV_SQRT_MAX:g}")
    sd = await mul(rt, v, await inv_sqrt_newton(rt, v, lazy=True))
    inv = await reciprocal_newton(rt, sd, lazy=True)
    if gamma is not None:
        inv_b, dg = await gather(_noop(inv), mul(rt, d, gamma, lazy=True))
        y = await mul(rt, dg, inv_b)
    else:
        y = await mul(rt, d, inv)
    return y + beta if beta is not None else y


async def below_bound(rt, x: np.ndarray, bound: float) -> np.ndarray:
    """Integer-scale shares of [x < bound] (one comparison, 8 rounds): for range checks."""
    return await ltz(rt, _plus(rt, x, -bound))


async def _noop(x: np.ndarray | Raw) -> np.ndarray | Raw:
    return x


async def odd_powers(rt, x: np.ndarray, top: int) -> dict[int, np.ndarray]:
    """x^1, x^2, ..., x^top by doubling (x^(k+j) = x^k x^j, one batched level per doubling).
    Rounds: ceil(log2 top)."""
    pw = {1: x}
    k = 1
    while k < top:
        need = [j for j in range(1, k + 1) if k + j <= top]
        prods = await gather(*(mul(rt, pw[k], pw[j]) for j in need))
        for j, p in zip(need, prods, strict=True):
            pw[k + j] = p
        k *= 2
    return pw


async def erf_taylor(rt, x: np.ndarray, iterations: int = 8) -> np.ndarray:
    """erf by its Maclaurin series to x^(2n+1), n = 8 (CrypTen's default erf_iterations).
    Rounds: 5 (powers up to 17 by doubling). Accurate only for |x| <~ 2: beyond, the series
    diverges and x^17 leaves the fixed-point range (as in CrypTen)."""
    top = 2 * iterations + 1
    pw = await odd_powers(rt, x, top)
    k = 2.0 / math.sqrt(math.pi)
    terms = [(pw[2 * n + 1], k * ((-1) ** n) / (math.factorial(n) * (2 * n + 1))) for n in range(1, iterations + 1)]
    return await lincomb_const(rt, [(x, k), *terms])


async def gelu_crypten(rt, x: np.ndarray) -> np.ndarray:
    """x/2 (1 + erf(x / sqrt 2)) with CrypTen's Taylor erf. Rounds: 5 + 1 = 6.
    Error is small for |x| <= 2.5 and unbounded beyond (see :func:`erf_taylor`)."""
    e = await erf_taylor(rt, await mul_const(rt, x, 1 / math.sqrt(2)))
    return await mul(rt, x, _plus(rt, e, 1.0), extra=1)


async def sigmoid_crypten(rt, x: np.ndarray, exp_iterations: int = SIGMOID_EXP_ITERATIONS) -> np.ndarray:
    """CrypTen's sigmoid ("reciprocal" method): on |x|, 1 / (1 + exp(-|x|)) with exp by the limit
    (n = 10 iterations; CrypTen: 9) and 3 Newton steps from 0.75; then sigma(x) = p or 1 - p by
    the sign. Valid for |x| < 2^(n+1). Rounds: 8 (sign, |x| fused) + n + 6 + 1 = 25."""
    ltz_bit, neg_part = await ltz_mul(rt, x, x)
    pos = x - np.uint64(2) * neg_part  # |x|
    den = _plus(rt, await exp_limit(rt, np.uint64(0) - pos, exp_iterations), 1.0)
    y: np.ndarray | Raw = _const(rt, 0.75, den.shape)
    for _ in range(3):
        xy = await mul(rt, den, y, lazy=True)
        y = await mul(rt, y, raw_rsub(rt, 2.0, xy), lazy=True)
    y = await settle(rt, y)
    # where(ltz, 1 - y, y) = y + ltz (1 - 2y); ltz has integer scale, so no truncation
    corr = await mul(rt, ltz_bit, _plus(rt, np.uint64(0) - np.uint64(2) * y, 1.0), trunc=False)
    return y + corr


async def tanh_crypten(rt, x: np.ndarray) -> np.ndarray:
    """tanh(x) = 2 sigmoid(2x) - 1 (CrypTen). Rounds: 25."""
    return _plus(rt, np.uint64(2) * await sigmoid_crypten(rt, np.uint64(2) * x), -1.0)


async def gelu_crypten_tanh(rt, x: np.ndarray) -> np.ndarray:
    """x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) with CrypTen's tanh: the GeLU CrypTen-based
    BERT code uses (SecFormer's CrypTen baseline). Rounds: 2 + 25 + 1 = 28. Valid for x < 30.6
    (the tanh form itself differs from exact GeLU by up to 4.7e-4): the sigmoid's exp by the limit
    needs |2 t| < 2^(n+1), t = 0.8 (x + 0.044715 x^3). With CrypTen's 9 iterations the limit is
    x < 24.3, and all-MiniLM-L6-v2 has 24.55 in layer 0. More iterations cost fixed-point
    precision (relative error ~2^n / 2^(f+1)): with 10, the private MiniLM's last hidden state
    is within 9e-3 of the plaintext, with 11 within 2e-2."""
    x3 = await mul(rt, await square(rt, x, lazy=True), x)
    s = math.sqrt(2 / math.pi)
    inner = await lincomb_const(rt, [(x, s), (x3, 0.044715 * s)])
    t = await tanh_crypten(rt, inner)
    return await mul(rt, x, _plus(rt, t, 1.0), extra=1)
