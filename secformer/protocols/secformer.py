"""SecFormer's protocols: GeLU by segmented Fourier series, LayerNorm by Goldschmidt's inverse
square root, Softmax replaced by 2Quad with Goldschmidt division (docs/PROTOCOLS.md).

Every function takes the runtime and shares and returns shares. Docstrings give rounds, bytes per
element per party (online), dealer bytes per element, error bound and assumed input range.
"""

from __future__ import annotations

import functools

import numpy as np

from secformer import coeffs
from secformer.protocols.base import (
    Raw,
    add_public,
    ltz_mul,
    ltz_mul_lin,
    mul,
    mul_const,
    mul_const_raw,
    mul_held,
    powers_mul,
    raw_rsub,
    settle,
    square,
    square_mul,
    truncate,
    truncate_held,
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
    batch). It stays untruncated: the comparisons' last round opens it once (its truncation, as
    in a product with a raw operand) together with x - a, and both bit products are computed from
    those two openings (:func:`~secformer.protocols.base.ltz_mul_lin`): no Beaver product and no
    truncation round of the series.
    With ``double`` the result is 2 GeLU = 2x + b1 (2G - x) - b0 (2G + x), which needs no
    halving of x: the caller folds the factor 2 into its next truncation (the FFN's second
    linear layer does).
    Rounds: 6 (coarse comparisons: |x| < 2^15 - 6, the fixed-point range). Bytes per element:
    2 x 7.9 (comparisons) + 2.5 (the phase) + 16 (the series and x, opened once for both
    products) + 8 (x/2's truncation, not with ``double``) = 42.3, or 34.3 doubled. Dealer:
    2 x 34 (comparisons and their products) + 10 (the series' truncation) + 16 x 10 (sin/cos
    tables) + 9 (x/2's truncation, not doubled) = 247 per element (238 doubled).
    Error: <= 1.1e-4 + 3 ulp for every input (fit 6.3e-6 on |x| <= 5.5; from |x| = 4.5 on,
    |GeLU - relu| <= 1.5e-5). Any x in the fixed-point range.
    """
    c = coeffs.G_COEFFS
    k = 2.0 if double else 1.0
    f = rt.fx.frac_bits
    G = Later(fourier_series(rt, x, coeffs.G_PERIOD_LOG2, cos_coeffs=[k * v for v in c[1:]], const=k * c[0], lazy=True))
    H = x if double else Later(_half(rt, x))  # x/2's round runs beside the comparisons
    a = _enc(rt, coeffs.G_WINDOW)
    xx = np.stack([add_public(rt, x, np.uint64(0) - a), add_public(rt, x, a)])
    _, prods = await ltz_mul_lin(rt, xx, G, f, H, alpha=(1, 1), beta=(-1, 1), bits=31, drop=15)
    base = x + x if double else x
    return base + prods[0] - prods[1]


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


async def _bucket_bits(
    rt, v: np.ndarray, enc_t: list[int], top: int, want_prods: bool, what: str, top_msg: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """[v < t_j] for the increasing ring thresholds ``enc_t`` (with the products [v < t_j] v when
    ``want_prods``), in one batched comparison that also checks 0 <= v < ``top``
    (:meth:`Runtime.expect_all`): outside, the run stops instead of returning a wrong result.
    A radix-4 comparison (v is per row: few elements, so its larger material costs little).
    Rounds: 5. Bytes: about 26.5 per element of v per threshold."""
    J = len(enc_t)
    enc = np.array([*enc_t, top, 0], dtype=np.int64).view(np.uint64).reshape((J + 2,) + (1,) * v.ndim)
    vv = np.broadcast_to(v, (J + 2, *v.shape))
    shifted = vv - (enc if rt.party == 0 else np.uint64(0))
    prods_of = np.ascontiguousarray(vv) if want_prods else None
    bits, prods = await ltz_mul(rt, np.ascontiguousarray(shifted), prods_of, fan=4)  # per row: rounds count
    below_top, negative = bits[J], bits[J + 1]
    rt.expect_all(below_top, top_msg)
    rt.expect_all((np.uint64(1) if rt.party == 0 else np.uint64(0)) - negative, f"{what} >= 0 (no overflow)")
    return bits[:J], (prods[:J] if prods is not None else None)


async def normalize_pow2(
    rt,
    v: np.ndarray,
    log2_base: int,
    lo: int,
    hi: int,
    want_w: bool = True,
    unit: int | None = None,
    what: str = "value",
    lazy: bool = False,
) -> tuple[np.ndarray | Raw | None, np.ndarray]:
    """Secure power-of-B normalisation (B = 2^log2_base) of a positive v, for Goldschmidt.

    One batched comparison of v against the thresholds B^j, j = lo..hi, gives the bucket k with
    v in [B^k, B^(k+1)) (k = lo - 1 below B^lo). Returns

    - w  = v B^-(k+1) in [1/B, 1) (fixed point; the products c_j v are fused into the
      comparisons), computed exactly in the integers: W = v + (B-1) sum_j B^(hi-j) [v < B^j] v,
      then w = W / B^(hi+1) (one truncation; with ``lazy``, w is a :class:`Raw` whose
      truncation rides in the next product's opening);
    - s' = 2^(hi-k) = 1 + sum_j 2^(hi-j) [v < B^j] as an integer-scale share, so that a tensor z
      can be rescaled exactly by z 2^-(k+1) = (z * s') >> (hi+1) with no 2f-scale product.

    This replaces the paper's unspecified deflation: every v in [0, B^(hi+1)) is handled, with no
    calibration. ``unit`` is the ring encoding of 1.0 for v (default 2^f): comparisons are
    scale-invariant, so v may be an untruncated sum (e.g. n 2^2f for a sum of n squares; w then
    has v's unit). The same batch checks 0 <= v < B^(hi+1) (:meth:`Runtime.expect_all`, named
    by ``what``): outside, the run stops instead of returning a wrong result. Rounds: 5 (+1 for
    w's truncation unless ``lazy``). Bytes: 39.75 per element of v per threshold (v is per row:
    small).
    """
    thresholds = np.arange(lo, hi + 1)
    J = thresholds.size
    f = rt.fx.frac_bits
    one = (1 << f) if unit is None else int(unit)
    enc_t = [round(2.0 ** (log2_base * int(j)) * one) for j in thresholds]
    bits, prods = await _bucket_bits(
        rt,
        v,
        enc_t,
        round(2.0 ** (log2_base * (hi + 1)) * one),
        want_w,
        what,
        f"{what} < {2 ** (log2_base * (hi + 1))}",
    )
    bshape = (J,) + (1,) * v.ndim
    w = None
    if want_w:
        wmul = np.array([((1 << log2_base) - 1) << (log2_base * (hi - int(j))) for j in thresholds], dtype=np.uint64)
        W = v + (prods * wmul.reshape(bshape)).sum(axis=0, dtype=np.uint64)
        w = Raw(W, log2_base * (hi + 1)) if lazy else await truncate(rt, W, log2_base * (hi + 1))
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


RSQRT_SUB = 4  # sub-buckets per power of 4 for the start of Goldschmidt's 1/sqrt
RSQRT_P = 28  # bits of the start's integer weights: x0 < 1.3 2^(P + 2f) < 2^61, and 3 - x0 too


@functools.lru_cache(maxsize=64)
def _rsqrt_table(lo: int, hi: int, unit: int, f: int, sub: int = RSQRT_SUB) -> tuple[np.ndarray, np.ndarray, int]:
    """Public table of :func:`normalize_rsqrt`: per sub-bucket u (v in [4^(lo + u/sub), 4^(lo +
    (u+1)/sub)) in units of 1.0), the integer weight G(u) and the fixed-point start y0(u), and
    the Goldschmidt iterations that bring the worst start within 2^-(f+2) relative error.
    Cached (the arrays are read-only)."""
    U = (hi - lo + 1) * sub
    u = np.arange(U)
    k, a, r = lo + u // sub, 4.0 ** ((u % sub) / sub - 1), 4.0 ** (1 / sub)  # w = v 4^-(k+1) in [a, a r)
    to_g = 4.0 ** -(k + 1) * 2.0 ** (RSQRT_P + 2 * f) / unit  # G(u) = c^2 to_g
    ideal = to_g * 2 / (a * (1 + r))  # c^2 = 2 / (a (1 + r)) centres x0 = c^2 w on 1
    G = np.empty(U)
    worst = 0.0
    for j in range(U):  # floor or ceil, whichever keeps x0 = c^2 w closer to 1
        cands = [max(1.0, np.floor(ideal[j])), np.ceil(ideal[j])]
        errs = [max(abs(1 - g / to_g[j] * a[j]), abs(1 - g / to_g[j] * a[j] * r)) for g in cands]
        G[j] = cands[int(np.argmin(errs))]
        worst = max(worst, min(errs))
    y0 = np.rint(np.sqrt(G / to_g) * 2.0**f)  # y0 = c exactly as G weighs: x0 = y0^2 w
    e, iterations = worst, 0
    while e > 2.0 ** -(f + 2):
        if iterations == 8 or e >= 1:
            raise ValueError(f"no usable Goldschmidt start for unit {unit}: worst |1 - x0| = {worst:.3f}")
        e, iterations = e * e * (3 + e) / 4, iterations + 1
    G, y0 = G.astype(np.int64), y0.astype(np.int64)
    G.flags.writeable = y0.flags.writeable = False
    return G, y0, iterations


async def normalize_rsqrt(
    rt,
    v: np.ndarray,
    lo: int,
    hi: int,
    unit: int,
    what: str = "value",
    sub: int = RSQRT_SUB,
    scale_y: bool = False,
) -> tuple[Raw, np.ndarray, np.ndarray, int]:
    """Goldschmidt's start for 1/sqrt(v) of a positive v, from one batched comparison.

    The thresholds 4^(j + i/sub) (j = lo..hi, i < sub) place v in a sub-bucket u: v in
    [4^k a, 4^k a r) with r = 4^(1/sub), so w = v 4^-(k+1) lies in [a, a r). A per-bucket
    constant c (c^2 = 2 / (a (1 + r))) puts x0 = c^2 w within about 0.8..1.2, where Goldschmidt
    needs 3 iterations (e' = e^2 (3 + e)/4: 0.2 -> 0.03 -> 7e-4 -> 4e-7) instead of 5 from c^2 = 1.6
    over [1/4, 1). Returns

    - x0 = G(u) v as a :class:`Raw` (no round): G(u) = c^2 4^-(k+1) 2^(P+2f) / unit is an integer
      per bucket, and G(u) v = G(top) v + sum_t [v < t] v (G(t-1) - G(t)) uses the comparison's
      fused products, so x0 costs no product and no truncation of its own;
    - y0 = c as a fixed-point share, linear in the comparison bits (local), with c^2 taken from
      the integer G(u) so that x0 = y0^2 w holds to y0's rounding (relative 2^-17);
    - s' = 2^(hi-k) (integer scale) to rescale a tensor by 2^-(k+1) (:func:`rescale_pow2`);
      with ``scale_y``, y0 = c s' instead: Goldschmidt then returns s'/sqrt(w) = 2^(hi+1)/sqrt(v)
      (in v's unit), and no tensor needs rescaling. The product of y0 and s' is local: both are
      functions of the bucket, linear in its comparison bits (the table holds c(u) s'(u));
    - the iterations the worst bucket needs (from the public table; 3 for rows of up to 1,600
      elements at f = 16: G's rounding moves x0 a little).

    Checks 0 <= v < 4^(hi+1) (the run stops outside). v below 4^lo shares the lowest bucket
    (x0 < 0.8: less accurate). Rounds: 5. Bytes: about 26.5 per element of v per threshold,
    (hi - lo + 1) sub + 2 thresholds (v is per row: small).
    """
    f = rt.fx.frac_bits
    U = (hi - lo + 1) * sub
    G, Y, iterations = _rsqrt_table(lo, hi, unit, f, sub)
    enc_t = [round(4.0 ** (lo + m / sub) * unit) for m in range(U)]
    top = round(4.0 ** (hi + 1) * unit)
    bits, prods = await _bucket_bits(rt, v, enc_t, top, True, what, f"{what} < {4 ** (hi + 1)}")
    bshape = (U - 1,) + (1,) * v.ndim
    dG = (G[:-1] - G[1:]).view(np.uint64).reshape(bshape)
    z = v * np.uint64(G[-1]) + (prods[1:] * dG).sum(axis=0, dtype=np.uint64)
    if scale_y:  # y0 = c(u) 2^(hi - k(u)), k(u) = lo + u // sub
        Y = Y * (np.int64(1) << (hi - lo - np.arange(U, dtype=np.int64) // sub))
    dY = (Y[:-1] - Y[1:]).view(np.uint64).reshape(bshape)
    y0 = (bits[1:] * dY).sum(axis=0, dtype=np.uint64)
    coarse = bits[::sub]  # [v < 4^j], j = lo..hi
    smul = np.array([1 << (hi - j) for j in range(lo, hi + 1)], dtype=np.uint64).reshape((hi - lo + 1,) + (1,) * v.ndim)
    s_int = (coarse * smul).sum(axis=0, dtype=np.uint64)
    if rt.party == 0:
        y0 = y0 + np.uint64(Y[-1])
        s_int = s_int + np.uint64(1)
    return Raw(z, RSQRT_P + f), y0, s_int, iterations


# --------------------------------------------------------------------------- Goldschmidt


async def reciprocal_goldschmidt(
    rt, w: np.ndarray | Raw, iterations: int = 7, lazy: bool = False, num0: np.ndarray | None = None
) -> np.ndarray | Raw:
    """1/w by Goldschmidt: num <- num m, den <- den m, m = 2 - den (both products in one round).

    Converges for w in (0, 2) with relative error e_n = (1 - w)^(2^n); for w in [1/2, 1) (after
    :func:`normalize_pow2`) 5 iterations reach 2e-10, the paper's 7 leave only rounding error.
    Every product stays :class:`Raw` and is truncated by the next one's opening. ``num0``: an
    integer-scale share (e.g. s' of :func:`normalize_pow2`) that the result is multiplied by,
    exactly, in the first round (num = num0 m beside den m), so that num0 / w needs no product
    of its own.
    Rounds: ``iterations`` (the first is local without ``num0``: num = m), +1 unless ``lazy``
    (then a Raw is returned). Bytes: 32 per element per iteration.
    """
    two = _enc(rt, 2.0)
    den: np.ndarray | Raw = w
    num: np.ndarray | Raw = w
    for i in range(iterations):
        if isinstance(den, Raw):
            m = raw_rsub(rt, 2.0, den)
        else:
            m = add_public(rt, np.uint64(0) - den, np.broadcast_to(two, den.shape))
        if i == 0 and num0 is None:
            num = m
            den = await mul(rt, den, m, lazy=True)
            continue
        if i == 0:  # num0 m: an integer times a fixed-point value, already at scale 2^f
            num, den = await gather(mul(rt, num0, m, trunc=False), mul(rt, den, m, lazy=True))
            continue
        num, den = await gather(mul(rt, num, m, lazy=True), mul(rt, den, m, lazy=True))
    return num if lazy else await settle(rt, num)


async def rsqrt_goldschmidt(rt, w: np.ndarray, iterations: int = 7, c: float = 1.2649110640673518) -> np.ndarray:
    """1/sqrt(w) by Goldschmidt: x <- x m^2, y <- y m, m = (3 - x)/2, from x = c^2 w, y = c.

    Invariant x = w y^2, so y -> 1/sqrt(w). Converges for c^2 w in (0, 3); e' = e^2 (3 + e)/4.
    With w in [1/4, 1) (normalised) and c^2 = 1.6, x starts in [0.4, 1.6): 5 iterations reach
    1e-9; the paper uses 7. Rounds: 2 + 1 per iteration (:func:`rsqrt_goldschmidt_from`).
    """
    return await rsqrt_goldschmidt_from(rt, await mul_const(rt, w, c * c), iterations, c)


async def rsqrt_goldschmidt_from(
    rt,
    x: np.ndarray | Raw,
    iterations: int = 7,
    c: float = 1.2649110640673518,
    lazy: bool = False,
    y0: np.ndarray | None = None,
) -> np.ndarray | Raw:
    """Goldschmidt's iterations for 1/sqrt(w) from x = c^2 w (see :func:`rsqrt_goldschmidt`);
    ``y0``: a shared start c instead of the public one (:func:`normalize_rsqrt`).

    x' = x m^2 = x (3 - x)^2 / 4 is a cubic in x, and y' = y m = (3y - x y) / 2: one opening of x
    and one of y give both (:func:`~secformer.protocols.base.powers_mul`), so an iteration is one
    round. Every result stays :class:`Raw`, its truncation (and the division by 4 or 2) riding in
    the next opening. Rounds: 1 per iteration, +1 unless ``lazy`` (then a Raw is returned).
    Bytes: 16 per element per iteration.
    """
    f = np.uint64(rt.fx.frac_bits)
    y: np.ndarray | Raw = (
        add_public(rt, np.zeros(x.shape, np.uint64), np.broadcast_to(_enc(rt, c), x.shape)) if y0 is None else y0
    )
    xr: Raw = x if isinstance(x, Raw) else Raw(x << f, 2 * rt.fx.frac_bits)  # an ordinary x: exact shift
    for _ in range(iterations):
        x1, x2, x3, y1, xy = await powers_mul(rt, xr, y)
        # 9x - 6x^2 + x^3 at scale 2^3f, / 4; 3y - x y at scale 2^2f, / 2
        xr = Raw((np.uint64(9) * x1 << (f + f)) - (np.uint64(6) * x2 << f) + x3, 2 * rt.fx.frac_bits + 2)
        y = Raw((np.uint64(3) * y1 << f) - xy, rt.fx.frac_bits + 1)
    return y if lazy else await settle(rt, y)


# --------------------------------------------------------------------------- LayerNorm, Softmax

LN_LO, LN_HI = -8, 7  # variance buckets 4^-8 = 2^-16 .. 4^8 = 2^16 (the fixed-point range)
SM_LO, SM_HI = -8, 15  # softmax row sums 2^-8 .. 2^16


LN_GUARD = 8  # extra fractional bits kept in d gamma until the last product (precision for small variances)
LN_GAMMA_BOUND = 2.0**14  # |gamma| sqrt(n) must stay below this (the last product's range; checked at load)


async def layernorm_secformer(
    rt,
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    iterations: int | None = None,
    eps: float = 0.0,
) -> np.ndarray:
    """LayerNorm over the last axis with Goldschmidt's inverse square root (SecFormer).

    mu = mean(x); d = x - mu, left untruncated; one opening of d gives both S = sum d^2
    (untruncated, scale 2^2f) and d gamma (:func:`~secformer.protocols.base.square_mul`:
    gamma, a per-column share, is opened beside it). One batched comparison of v = S / n + eps
    with the thresholds 4^(j + i/4) (:func:`normalize_rsqrt`) gives its power-of-4 bucket k and,
    from the fused products, Goldschmidt's start x0 = c^2 v 4^-(k+1) near 1 with y0 = c 2^(hi-k)
    (local), so that Goldschmidt's rsqrt (3 iterations: the start is within about 0.2 of 1,
    relative error 4e-7, not the paper's 7 from an unnormalised start) returns
    r' = 2^(hi+1) / sqrt(v) directly. Then y = (d gamma) r' 2^-(hi+1) + beta: one product and
    one truncation, with d gamma carrying ``LN_GUARD`` extra fractional bits (the opening that
    truncates it keeps them), so rows of small variance keep their resolution.
    This replaces the paper's unspecified deflation: every variance in [2^-16, 2^16) is handled,
    with no calibration. ``gamma`` and ``beta`` are shares (the model owner's weights) or None.
    ``eps`` is added to S before the bucket (GPT-2's 1e-5 matters for small variances; BERT's
    1e-12 is below the fixed-point resolution and drops out). ``iterations``: default what the
    start's table needs (3 for rows of up to 1,600 elements).
    Rounds: square and d gamma 1 + bucket 5 (radix 4) + 1 per iteration (x's cubic and y's
    product from one opening: :func:`rsqrt_goldschmidt_from`) + final product 1 and truncation
    1 = 11. Bytes per element of x: 24 (the opening of d, the product, the truncation; + per
    row and per column).
    Range: |d| < 2^15 (the fixed-point range) and |gamma| sqrt(n) < 2^14 (the model loader
    checks the weights). Error: ~1.5e-4 absolute on outputs of magnitude ~3, for row variances
    in [2^-16, 2^16) (smaller ones share the lowest bucket: a start below 0.8 that 3 iterations
    do not bring to 1).
    """
    n = x.shape[-1]
    f = rt.fx.frac_bits
    # d = x - mean(x), left untruncated (Raw): mean = sum x (1/n) at scale 2^(f + bits)
    mz, bits = mul_const_raw(rt, x.sum(axis=-1, keepdims=True, dtype=np.uint64), 1.0 / n)
    d = Raw((x << np.uint64(bits)) - mz, bits)
    if gamma is None:
        gamma = add_public(rt, np.zeros(n, np.uint64), np.broadcast_to(_enc(rt, 1.0), (n,)))
    # The bucket needs no truncation: v = S / n with S = sum d^2 at scale 2^2f (comparisons are
    # scale-invariant), compared with n 4^j 2^2f. |d| < 2^13 keeps S below 2^62.
    sq, dg = await square_mul(rt, d, gamma)
    S = sq.sum(axis=-1, keepdims=True, dtype=np.uint64)
    if eps > 0:  # the bucket and the start are those of v + eps
        S = add_public(rt, S, np.uint64(round(eps * n * 2.0 ** (2 * f))))
    x0, y0, _, needed = await normalize_rsqrt(rt, S, LN_LO, LN_HI, unit=n << (2 * f), what="row variance", scale_y=True)
    r = await rsqrt_goldschmidt_from(rt, x0, needed if iterations is None else iterations, lazy=True, y0=y0)
    u = Raw(dg, f - LN_GUARD)  # 2^LN_GUARD d gamma, truncated by the product's opening
    z = await mul(rt, u, r, trunc=False)
    y = await truncate(rt, z, f + LN_GUARD + LN_HI + 1)
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
    [1/2, 1): 5 iterations converge for every S in [2^-8, 2^16). Its numerator starts from
    s' = 2^(hi-k) (an integer share from the same comparison), so it returns s' / w =
    2^(hi+1) / S and no tensor needs rescaling. q's truncation keeps its opening
    (:func:`~secformer.protocols.base.truncate_held`): the last product q (s' / w) opens only the
    per-row factor, then one truncation by f + hi + 1.
    Rounds: square 1 + truncation 1 + bucket 5 (radix 4) + 5 iterations + final product 1 and
    truncation 1 = 14 (w's truncation rides in the first iteration's product). Bytes per
    element: 24 (the openings of x + c and of q, the output's truncation; + per row).
    Error: about 2^-15 absolute per weight (dominated by fixed-point resolution of q 2^-(k+1)).
    """
    # q / 16 = ((x + c) / 4)^2 (the 1/16 rides in the truncation): the ratio q / S is unchanged
    # and the row sums stay well inside the normalisation's range. The truncation's opening is
    # kept: the last product q inv' then opens only inv' (per row).
    f = rt.fx.frac_bits
    xc = add_public(rt, x, np.broadcast_to(_enc(rt, c), x.shape))
    q, held = await truncate_held(rt, await square(rt, xc, trunc=False), f + 4, (*x.shape[:-1], 1), bits_b=f)
    keep = np.asarray(mask).astype(np.uint64) if mask is not None else None
    if keep is not None:
        q = q * keep
    S = q.sum(axis=-1, keepdims=True, dtype=np.uint64)
    w, s_int = await normalize_pow2(rt, S, 1, SM_LO, SM_HI, what="2Quad row sum / 16", lazy=True)
    inv = await reciprocal_goldschmidt(rt, w, iterations, lazy=True, num0=s_int)  # s' / w = 2^(hi+1) / S
    # q inv' 2^-(hi+1): the product from q's kept opening, one truncation
    y = await truncate(rt, await mul_held(rt, held, inv), f + SM_HI + 1)
    return y * keep if keep is not None else y
