"""SecFormer's protocols: GeLU by segmented Fourier series, LayerNorm by Goldschmidt's inverse
square root, Softmax replaced by 2Quad with Goldschmidt division (docs/PROTOCOLS.md).

Every function takes the runtime and shares and returns shares. Docstrings give rounds, bytes per
element per party (online), dealer bytes per element, error bound and assumed input range.
"""

from __future__ import annotations

import numpy as np

from secformer import coeffs
from secformer.protocols.base import (
    Raw,
    add_public,
    lincomb_const,
    ltz_mul,
    mul,
    mul_const,
    mul_const_raw,
    raw_rsub,
    settle,
    square,
    truncate,
)
from secformer.protocols.fourier import fourier_series
from secformer.runtime import Later, gather


def _enc(rt, v: float) -> np.ndarray:
    return np.asarray(np.int64(round(v * rt.fx.scale))).view(np.uint64)


async def _half(rt, x: np.ndarray) -> np.ndarray:
    return await truncate(rt, x, 1)


async def _segmented(rt, x: np.ndarray, window: float, y_hi, y_lo, base=None, drop: int = 0) -> np.ndarray:
    """base + [x < a] y_hi - [x < -a] y_lo (base defaults to x): two comparisons in one batch,
    products fused.

    ``y_hi``/``y_lo`` are awaitables (computed while the comparisons run); ``drop`` = 15 makes
    the comparisons coarse (either branch within +-2^15 ulp of +-a: :func:`ltz_mul`).
    Rounds: 7, or 6 with ``drop``.
    """

    async def both() -> np.ndarray:
        return np.concatenate([(await y_hi.get()).ravel(), (await y_lo.get()).ravel()])

    a = _enc(rt, window)
    xx = np.concatenate([add_public(rt, x, np.uint64(0) - a).ravel(), add_public(rt, x, a).ravel()])
    _, prods = await ltz_mul(rt, xx, Later(both()), bits=31, drop=drop)  # |x| + a < 2^15: 31 bits suffice
    n = x.size
    base = x if base is None else base
    return base + prods[:n].reshape(x.shape) - prods[n:].reshape(x.shape)


async def gelu_secformer(rt, x: np.ndarray, double: bool = False) -> np.ndarray:
    """GeLU(x) = x Phi(x) by a segmented Fourier series (SecFormer's structure, refitted).

    With g(x) = GeLU(x) - x/2 = (x/2) erf(x/sqrt 2) (even) approximated by a cosine series G of
    period 16 fitted on |x| <= 5.5 (``tools/fit_fourier.py``), and the coarse comparisons
    b1 = [x < 5], b0 = [x < -5] (either value within +-0.5 of the threshold, where both
    branches are within 1.5e-5 of GeLU):

        GeLU = x + b1 (G - x/2) - b0 (G + x/2)     (= x above 5, 0 below -5, x/2 + G between).

    The series costs one opening of x's phase, run in parallel with the two comparisons (one
    batch), and both bit products are fused into the comparisons' last round: no Beaver product.
    With ``double`` the result is 2 GeLU = 2x + b1 (2G - x) - b0 (2G + x), which needs no
    halving of x: the caller folds the factor 2 into its next truncation (the FFN's second
    linear layer does).
    Rounds: 6 (coarse comparisons: |x| < 2^15 - 6, the fixed-point range). Bytes per element:
    2 x 15.9 (comparisons with their products) + 2.5 (the phase) + 8 (the series' truncation)
    + 8 (x/2's truncation, not with ``double``) = 50.3, or 42.3 doubled. Dealer: 2 x 24
    (comparisons) + 16 x 10 (sin/cos tables) + 10 + 9 (truncations) = 227 per element (218 doubled).
    Error: <= 1.1e-4 + 3 ulp for every input (fit 6.3e-6 on |x| <= 5.5; from |x| = 4.5 on,
    |GeLU - relu| <= 1.5e-5). Any x in the fixed-point range.
    """
    c = coeffs.G_COEFFS
    k = 2.0 if double else 1.0
    G = Later(fourier_series(rt, x, coeffs.G_PERIOD_LOG2, cos_coeffs=[k * v for v in c[1:]], const=k * c[0]))
    if double:

        async def hi2() -> np.ndarray:
            return (await G.get()) - x

        async def lo2() -> np.ndarray:
            return (await G.get()) + x

        return await _segmented(rt, x, coeffs.G_WINDOW, Later(hi2()), Later(lo2()), base=x + x, drop=15)

    X2 = Later(_half(rt, x))  # x/2 (its truncation round runs beside the comparisons)

    async def hi() -> np.ndarray:
        return (await G.get()) - (await X2.get())

    async def lo() -> np.ndarray:
        return (await G.get()) + (await X2.get())

    return await _segmented(rt, x, coeffs.G_WINDOW, Later(hi()), Later(lo()), drop=15)


gelu_secformer.doubles = True  # type: ignore[attr-defined]  # supports double=True (see above)


async def gelu_secformer_erf(rt, x: np.ndarray) -> np.ndarray:
    """GeLU = x/2 (1 + erf(x/sqrt 2)) with erf = -1 / Fourier F / +1 (the paper's form).

    F is the sine series of erf(x/sqrt 2) on |x| <= 4 with period 16 (refitted; the paper's period
    20 cannot be perfectly hidden). x F is one Beaver product computed while the comparisons run;
    GeLU = x + b1 (xF - x)/2 - b0 (xF + x)/2 with fused bit products.
    Rounds: 7 (31-bit comparisons, |x| < 2^15 - 5). Bytes: about 90 per element. Dealer: about
    200 per element.
    Error: <= 3.3e-4 on the BERT range (|x| F's fit error 3.9e-5 times |x|/2 <= 2, plus noise).
    """
    F = Later(fourier_series(rt, x, coeffs.ERF_PERIOD_LOG2, sin_coeffs=coeffs.ERF_COEFFS))

    async def xf() -> np.ndarray:
        return await mul(rt, x, await F.get())

    XF = Later(xf())

    async def hi() -> np.ndarray:
        return await _half(rt, (await XF.get()) - x)

    async def lo() -> np.ndarray:
        return await _half(rt, (await XF.get()) + x)

    return await _segmented(rt, x, coeffs.ERF_WINDOW, Later(hi()), Later(lo()))


async def tanh_fourier(rt, x: np.ndarray) -> np.ndarray:
    """tanh(x) = -1 / Fourier F / +1, segmented like SecFormer's erf (for the BERT pooler).

    tanh = 1 - b1 (1 - F) - b0 (1 + F) with b1 = [x < a], b0 = [x < -a], a = 5, F a 14-term sine
    series of period 16. Chosen over CrypTen's sigmoid-based tanh (exp + reciprocal: ~30 rounds)
    because it reuses the GeLU machinery: 8 rounds, one opening, no Beaver product.
    Rounds: 7 (31-bit comparisons, |x| < 2^15 - 5). Bytes: about 58 per element. Dealer: 56 + 224
    + 12. Error: <= 2.3e-4.
    """
    F = Later(fourier_series(rt, x, coeffs.TANH_PERIOD_LOG2, sin_coeffs=coeffs.TANH_COEFFS))
    one = _enc(rt, 1.0)

    async def hi() -> np.ndarray:  # 1 - F
        return add_public(rt, np.uint64(0) - await F.get(), one)

    async def lo() -> np.ndarray:  # 1 + F
        return add_public(rt, await F.get(), one)

    # tanh = x' + b1 y_hi - b0 y_lo with x' = 1 - ... : reuse _segmented on the constant 1
    a = _enc(rt, coeffs.TANH_WINDOW)
    xx = np.concatenate([add_public(rt, x, np.uint64(0) - a).ravel(), add_public(rt, x, a).ravel()])

    async def both() -> np.ndarray:
        h, lo_ = await Later(hi()).get(), await Later(lo()).get()
        return np.concatenate([h.ravel(), lo_.ravel()])

    _, prods = await ltz_mul(rt, xx, Later(both()), bits=31)  # |x| + a < 2^15: 31 bits suffice
    n = x.size
    base = add_public(rt, np.zeros_like(x), np.broadcast_to(one, x.shape))
    return base - prods[:n].reshape(x.shape) - prods[n:].reshape(x.shape)


# --------------------------------------------------------------------------- range normalisation


async def normalize_pow2(
    rt,
    v: np.ndarray,
    log2_base: int,
    lo: int,
    hi: int,
    want_w: bool = True,
    unit: int | None = None,
    what: str = "value",
    w_shift: int = 0,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Secure power-of-B normalisation (B = 2^log2_base) of a positive v, for Goldschmidt.

    One batched comparison of v against the thresholds B^j, j = lo..hi, gives the bucket k with
    v in [B^k, B^(k+1)) (k = lo - 1 below B^lo). Returns

    - w  = v B^-(k+1) in [1/B, 1) (fixed point; the products c_j v are fused into the
      comparisons), computed exactly in the integers: W = v + (B-1) sum_j B^(hi-j) [v < B^j] v,
      then w = W / B^(hi+1) (one truncation; ``w_shift`` more bits divide it by 2^w_shift);
    - s' = 2^(hi-k) = 1 + sum_j 2^(hi-j) [v < B^j] as an integer-scale share, so that a tensor z
      can be rescaled exactly by z 2^-(k+1) = (z * s') >> (hi+1) with no 2f-scale product.

    This replaces the paper's unspecified deflation: every v in [0, B^(hi+1)) is handled, with no
    calibration. ``unit`` is the ring encoding of 1.0 for v (default 2^f): comparisons are
    scale-invariant, so v may be an untruncated sum (e.g. n 2^2f for a sum of n squares; w then
    has v's unit, over 2^w_shift). The same batch checks 0 <= v < B^(hi+1)
    (:meth:`Runtime.expect_all`, named by ``what``): outside, the run stops instead of
    returning a wrong result. Rounds: 8 (+1 for w's truncation). Bytes: 39.75 per element of v
    per threshold (v is per row: small).
    """
    thresholds = np.arange(lo, hi + 1)
    J = thresholds.size
    f = rt.fx.frac_bits
    one = (1 << f) if unit is None else int(unit)
    enc_t = [round(2.0 ** (log2_base * int(j)) * one) for j in thresholds]
    enc_t = np.array([*enc_t, round(2.0 ** (log2_base * (hi + 1)) * one), 0], dtype=np.int64)  # + the checks
    vv = np.broadcast_to(v, (J + 2, *v.shape))
    shifted = vv - (enc_t.view(np.uint64).reshape((J + 2,) + (1,) * v.ndim) if rt.party == 0 else np.uint64(0))
    bits, prods = await ltz_mul(rt, np.ascontiguousarray(shifted), np.ascontiguousarray(vv) if want_w else None)
    below_top, negative = bits[J], bits[J + 1]
    rt.expect_all(below_top, f"{what} < {2 ** (log2_base * (hi + 1))}")
    rt.expect_all((np.uint64(1) if rt.party == 0 else np.uint64(0)) - negative, f"{what} >= 0 (no overflow)")
    bits = bits[:J]
    prods = prods[:J] if prods is not None else None
    bshape = (J,) + (1,) * v.ndim
    w = None
    if want_w:
        wmul = np.array([((1 << log2_base) - 1) << (log2_base * (hi - int(j))) for j in thresholds], dtype=np.uint64)
        W = v + (prods * wmul.reshape(bshape)).sum(axis=0, dtype=np.uint64)
        w = await truncate(rt, W, log2_base * (hi + 1) + w_shift)
    smul = np.array([1 << (hi - int(j)) for j in thresholds], dtype=np.uint64).reshape(bshape)
    s_int = (bits * smul).sum(axis=0, dtype=np.uint64)
    if rt.party == 0:
        s_int = s_int + np.uint64(1)
    return w, s_int


async def rescale_pow2(rt, z: np.ndarray | Raw, s_int: np.ndarray, hi: int) -> Raw:
    """z 2^-(k+1) from the integer-scale s' = 2^(hi-k) of :func:`normalize_pow2`, as a :class:`Raw`.

    The product z s' is exact (integer factor); its division by 2^(hi+1) is left to the next
    product's opening. 1 round, 8 B per element of z (+ per element of s'). Error: 1 ulp.
    """
    return Raw(await mul(rt, z, s_int, trunc=False), hi + 1)


# --------------------------------------------------------------------------- Goldschmidt


async def reciprocal_goldschmidt(rt, w: np.ndarray, iterations: int = 7, lazy: bool = False) -> np.ndarray | Raw:
    """1/w by Goldschmidt: num <- num m, den <- den m, m = 2 - den (both products in one round).

    Converges for w in (0, 2) with relative error e_n = (1 - w)^(2^n); for w in [1/2, 1) (after
    :func:`normalize_pow2`) 5 iterations reach 2e-10, the paper's 7 leave only rounding error.
    Every product stays :class:`Raw` and is truncated by the next one's opening.
    Rounds: ``iterations`` (the first is local: num = m), +1 unless ``lazy`` (then a Raw is
    returned). Bytes: 32 per element per iteration.
    """
    two = _enc(rt, 2.0)
    den: np.ndarray | Raw = w
    num: np.ndarray | Raw = w
    for i in range(iterations):
        if isinstance(den, Raw):
            m = raw_rsub(rt, 2.0, den)
        else:
            m = add_public(rt, np.uint64(0) - den, np.broadcast_to(two, den.shape))
        if i == 0:
            num = m
            den = await mul(rt, den, m, lazy=True)
            continue
        num, den = await gather(mul(rt, num, m, lazy=True), mul(rt, den, m, lazy=True))
    return num if lazy else await settle(rt, num)


async def rsqrt_goldschmidt(rt, w: np.ndarray, iterations: int = 7, c: float = 1.2649110640673518) -> np.ndarray:
    """1/sqrt(w) by Goldschmidt: x <- x m^2, y <- y m, m = (3 - x)/2, from x = c^2 w, y = c.

    Invariant x = w y^2, so y -> 1/sqrt(w). Converges for c^2 w in (0, 3); e' = e^2 (3 + e)/4.
    With w in [1/4, 1) (normalised) and c^2 = 1.6, x starts in [0.4, 1.6): 5 iterations reach
    1e-9; the paper uses 7. Rounds: 2 + 2 per iteration (:func:`rsqrt_goldschmidt_from`).
    """
    return await rsqrt_goldschmidt_from(rt, await mul_const(rt, w, c * c), iterations, c)


async def rsqrt_goldschmidt_from(
    rt, x: np.ndarray, iterations: int = 7, c: float = 1.2649110640673518, lazy: bool = False
) -> np.ndarray | Raw:
    """Goldschmidt's iterations for 1/sqrt(w) from x = c^2 w (see :func:`rsqrt_goldschmidt`).

    Every product stays :class:`Raw` and is truncated by the next one's opening; the halving of
    m = (3 - x)/2 rides in those truncations (m^2 = (3 - x)^2 / 4 and y m = y (3 - x) / 2 drop
    f + 2 and f + 1 bits). Rounds: 2 per iteration (m^2 with y m, then x m^2), +1 unless
    ``lazy`` (then a Raw is returned). Bytes: 48 per element per iteration.
    """
    three = _enc(rt, 3.0)
    y: np.ndarray | Raw = add_public(rt, np.zeros_like(x), np.broadcast_to(_enc(rt, c), x.shape))
    xr: np.ndarray | Raw = x
    for _ in range(iterations):
        if isinstance(xr, Raw):
            m3 = raw_rsub(rt, 3.0, xr)  # 3 - x = 2 m
        else:
            m3 = add_public(rt, np.uint64(0) - xr, np.broadcast_to(three, xr.shape))
        m2, y = await gather(square(rt, m3, extra=2, lazy=True), mul(rt, y, m3, extra=1, lazy=True))
        xr = await mul(rt, xr, m2, lazy=True)
    return y if lazy else await settle(rt, y)


# --------------------------------------------------------------------------- LayerNorm, Softmax

LN_LO, LN_HI = -5, 7  # variance buckets 4^-5 ~ 0.001 .. 4^8 = 2^16 (the fixed-point range)
SM_LO, SM_HI = -8, 15  # softmax row sums 2^-8 .. 2^16


async def layernorm_secformer(
    rt,
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    iterations: int = 5,
    eps: float = 0.0,
) -> np.ndarray:
    """LayerNorm over the last axis with Goldschmidt's inverse square root (SecFormer).

    mu = mean(x); d = x - mu; S = sum d^2 (untruncated, scale 2^2f), v = S / n. The power-of-4
    bucket k of v + eps (4^k <= v + eps < 4^(k+1)) comes from one batched comparison
    (:func:`normalize_pow2`), whose fused products also give w = (v + eps) 4^-(k+1) in [1/4, 1)
    exactly from S (S keeps 2f fractional bits, so w is precise even for small variances);
    d is rescaled exactly, dn = d 2^-(k+1). Then y = dn gamma / sqrt(w) + beta with
    Goldschmidt's rsqrt: 5 iterations, not the paper's 7, since x0 = 1.6 w starts in [0.4, 1.6),
    where 5 reach a relative error of 5e-10 (e' = e^2 (3 + e)/4). This replaces the paper's unspecified
    deflation: every variance in [2^-16, 2^16) is handled, with no calibration. ``gamma`` and
    ``beta`` are shares (the model owner's weights) or None. ``eps`` is added to S before the
    bucket (GPT-2's 1e-5 matters for small variances; BERT's 1e-12 is below the fixed-point
    resolution and drops out). d = x - mu and the rescaled d stay untruncated (:class:`Raw`):
    their truncations ride in the products that consume them.
    Rounds: square 1 + bucket 8 + w's truncation 1 + x0 = c^2 w 1 + 2 x iterations + final
    product 1 and truncation 1 = 23 (the rescaling and the product with gamma run beside).
    Bytes per element of x: 40 (square, rescale, gamma, final product, truncation; + per row).
    Error: ~1.5e-4 absolute on outputs of magnitude ~3 (fixed-point resolution of d), for row
    variances from about 1e-3 up to the fixed-point range (smaller ones share the lowest bucket).
    """
    n = x.shape[-1]
    f = rt.fx.frac_bits
    # d = x - mean(x), left untruncated (Raw): mean = sum x (1/n) at scale 2^(f + bits)
    mz, bits = mul_const_raw(rt, x.sum(axis=-1, keepdims=True, dtype=np.uint64), 1.0 / n)
    d = Raw((x << np.uint64(bits)) - mz, bits)
    # The bucket needs no truncation either: v = S / n with S = sum d^2 at scale 2^2f
    # (comparisons are scale-invariant), compared with n 4^j 2^2f. |d| < 2^13 keeps S below 2^62.
    S = (await square(rt, d, trunc=False)).sum(axis=-1, keepdims=True, dtype=np.uint64)
    if eps > 0:  # the bucket and w are those of v + eps
        S = add_public(rt, S, np.uint64(round(eps * n * 2.0 ** (2 * f))))
    sh = n.bit_length() - 1  # 2^sh <= n < 2^(sh+1): w's truncation also divides by 2^sh
    # w = (v + eps) 4^-(k+1) (n / 2^sh) 2^2f, per row
    w, s_int = await normalize_pow2(rt, S, 2, LN_LO, LN_HI, unit=n << (2 * f), w_shift=sh, what="row variance")
    c = 1.2649110640673518
    # x0 = c^2 (v + eps) 4^-(k+1) at scale 2^f (the constant c^2 2^sh / n lies in [1.6, 3.2))
    dn, x0 = await gather(rescale_pow2(rt, d, s_int, LN_HI), lincomb_const(rt, [(w, c * c * 2**sh / n)], extra=f))

    async def dg() -> np.ndarray | Raw:
        return await mul(rt, dn, gamma, lazy=True) if gamma is not None else dn

    scaled = Later(dg())
    r = await rsqrt_goldschmidt_from(rt, x0, iterations, c, lazy=True)
    y = await mul(rt, await scaled.get(), r)
    if beta is not None:
        y = y + beta
    return y


async def softmax_2quad(
    rt, x: np.ndarray, mask: np.ndarray | None = None, c: float = 5.0, iterations: int = 5
) -> np.ndarray:
    """2Quad: (x + c)^2 / sum (x + c)^2 over the last axis, division by Goldschmidt (SecFormer).

    ``mask`` is public (1 keep, 0 drop, broadcastable): dropped positions get weight exactly 0
    (the product with the mask is local and exact), not (-large + c)^2. The row sum S is
    normalised by powers of 2 (:func:`normalize_pow2`) so Goldschmidt runs on S 2^-(k+1) in
    [1/2, 1): the paper's 7 iterations converge for every S in [2^-8, 2^16); the numerators are
    rescaled exactly by the same power of two.
    Rounds: square 1 + truncation 1 + bucket 8 + w's truncation 1 + 7 + final product 1 and
    truncation 1 = 20 (rescaling runs beside Goldschmidt). Bytes per element: ~32.
    Error: about 2^-15 absolute per weight (dominated by fixed-point resolution of q 2^-(k+1)).
    """
    # q / 16 = ((x + c) / 4)^2 (the 1/16 rides in the square's truncation): the ratio q / S is
    # unchanged and the row sums stay well inside the normalisation's range
    q = await square(rt, add_public(rt, x, np.broadcast_to(_enc(rt, c), x.shape)), extra=4)
    if mask is not None:
        q = q * np.asarray(mask).astype(np.uint64)
    S = q.sum(axis=-1, keepdims=True, dtype=np.uint64)
    w, s_int = await normalize_pow2(rt, S, 1, SM_LO, SM_HI, what="2Quad row sum / 16")
    inv, qn = await gather(reciprocal_goldschmidt(rt, w, iterations, lazy=True), rescale_pow2(rt, q, s_int, SM_HI))
    return await mul(rt, qn, inv)
