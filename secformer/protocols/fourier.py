"""Secure Fourier series with a power-of-two period (SecFormer's Pi_sin, made perfectly hiding).

The paper masks x with a real t drawn from a bounded interval, so the opened x - t is only
statistically hiding, and it reduces the opened value mod 2*pi, which is wrong for frequencies
other than 1 (docs/PROTOCOLS.md). Here the period is P = 2^p in real units, so in
the fixed-point ring the phase of x is x mod 2^(p+f). The dealer draws t uniformly in Z_2^64:
the opened delta = x - t is then uniform (perfect hiding), and delta mod 2^(p+f) plus
t mod 2^(p+f) is the phase of x exactly, so the angle-sum identity holds with no error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from secformer import ring
from secformer.material import Trig
from secformer.protocols.base import Raw, add_public, open_low, truncate


async def fourier_series(
    rt,
    x: np.ndarray,
    period_log2: int,
    sin_coeffs: Sequence[float] = (),
    cos_coeffs: Sequence[float] = (),
    const: float = 0.0,
    lazy: bool = False,
) -> np.ndarray | Raw:
    """Shares of const + sum_k sin_coeffs[k-1] sin(2 pi k x / P) + cos_coeffs[k-1] cos(2 pi k x / P).

    P = 2^period_log2. Works for every ring element x (no range assumption: the series is
    periodic). Rounds: 2 (the opening, then the truncation of the sum). Bytes: (p + f)/8 + 8 per
    element (only delta mod 2^(p+f), the phase, is opened: 2.5 B for P = 16 at f = 16).
    Dealer: 16 K + 16 per element (K = number of terms).
    Error: |sum| (|beta_k| + 1) 2^-(f+1) + 2^-f on top of the series' own fit error.
    With ``lazy`` the sum is returned as a :class:`Raw` still to be truncated by f bits: 1 round
    and (p + f)/8 B per element, the truncation riding in the consumer's opening.
    """
    K = max(len(sin_coeffs), len(cos_coeffs))
    f = rt.fx.frac_bits
    bits = period_log2 + f
    m = await rt.material(Trig(x.shape, K, bits, f))
    delta = await open_low(rt, x - m["t"], bits)  # only the phase: delta mod 2^(p+f)
    beta = np.zeros(K)
    beta[: len(sin_coeffs)] = sin_coeffs
    gamma = np.zeros(K)
    gamma[: len(cos_coeffs)] = cos_coeffs
    n = x.size
    # sin(k(d+t)) = sin(kd)cos(kt) + cos(kd)sin(kt); cos(k(d+t)) = cos(kd)cos(kt) - sin(kd)sin(kt)
    acc = ring.fourier_combine(
        np.ascontiguousarray(delta).ravel(),
        bits,
        beta,
        gamma,
        np.ascontiguousarray(m["sin"]).reshape(K, n),
        np.ascontiguousarray(m["cos"]).reshape(K, n),
        f,
    ).reshape(x.shape)
    scale = float(1 << f)
    if lazy:
        if const:
            acc = add_public(rt, acc, np.uint64(np.int64(round(const * scale))) << np.uint64(f))
        return Raw(acc, f)
    out = await truncate(rt, acc)
    if const:
        out = add_public(rt, out, np.full(x.shape, np.int64(round(const * scale))).view(np.uint64))
    return out
