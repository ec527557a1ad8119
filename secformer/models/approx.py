"""The approximation modes in float64: what the private protocols compute, without MPC.

The plaintext backend uses these so that (plaintext with approximations) vs (original model)
measures approximation error, and (private) vs (plaintext with approximations) measures MPC
error (fixed point, truncation). Each function mirrors the protocol of the same name.
"""

from __future__ import annotations

import math

import numpy as np

from secformer import coeffs
from secformer.errors import OutOfRangeError
from secformer.protocols.crypten import INV_SQRT_ITERATIONS, RECIPROCAL_MAX, SIGMOID_EXP_ITERATIONS
from secformer.protocols.puma import P3, P6

_erf = np.vectorize(math.erf)


def gelu_exact(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def gelu_secformer(x):
    c = coeffs.G_COEFFS
    k = np.arange(1, len(c))
    G = c[0] + np.cos(np.multiply.outer(x, k) * (2 * np.pi / 2**coeffs.G_PERIOD_LOG2)) @ np.asarray(c[1:])
    a = coeffs.G_WINDOW
    return np.where(x < -a, 0.0, np.where(x < a, 0.5 * x + G, x))


def _fourier_sin(x, c, p):
    k = np.arange(1, len(c) + 1)
    return np.sin(np.multiply.outer(x, k) * (2 * np.pi / 2**p)) @ np.asarray(c)


def tanh_fourier(x):
    F = _fourier_sin(x, coeffs.TANH_COEFFS, coeffs.TANH_PERIOD_LOG2)
    a = coeffs.TANH_WINDOW
    return np.where(x < -a, -1.0, np.where(x < a, F, 1.0))


def gelu_puma(x):
    p3 = sum(c * x**k for k, c in enumerate(P3))
    p6 = sum(c * x**k for k, c in enumerate(P6))
    return np.where(x < -4, 0.0, np.where(x < -1.95, p3, np.where(x < 3, p6, x)))


def gelu_quad(x):
    return 0.125 * x**2 + 0.25 * x + 0.5


def exp_limit(x, n=8):
    return (1 + x / 2**n) ** (2**n)


def reciprocal_newton(x, iters=10, init=None):
    y = 3 * exp_limit(1 - 2 * x) + 0.003 if init is None else np.full_like(x, init)
    for _ in range(iters):
        y = y * (2 - x * y)
    return y


def inv_sqrt_newton(x, iters=INV_SQRT_ITERATIONS):
    y = 2.2 * exp_limit(-(x / 2 + 0.2)) + 0.2 - x / 1024
    for _ in range(iters):
        y = y * (3 - x * y * y) / 2
    return y


def sigmoid_crypten(x):
    p = reciprocal_newton(1 + exp_limit(-np.abs(x), SIGMOID_EXP_ITERATIONS), iters=3, init=0.75)
    return np.where(x < 0, 1 - p, p)


def tanh_crypten(x):
    return 2 * sigmoid_crypten(2 * x) - 1


def gelu_crypten_tanh(x):
    return 0.5 * x * (1 + tanh_crypten(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def softmax_exact(x, mask):
    z = np.where(mask > 0, x, -np.inf)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def softmax_2quad(x, mask):
    q = (x + 5) ** 2 * mask
    return q / q.sum(-1, keepdims=True)


def softmax_2quad_newton(x, mask):
    """MPCFormer's 2Quad with CrypTen's Newton reciprocal of the row mean. Like the private mode,
    it refuses row means of RECIPROCAL_MAX or more (OutOfRangeError): there the private run
    stops, so a plaintext answer would overstate what the mode can do."""
    q = (x + 5) ** 2 * mask
    L = x.shape[-1]
    mean = q.sum(-1, keepdims=True) / L
    if np.any(mean >= RECIPROCAL_MAX):
        raise OutOfRangeError(
            f"2Quad row mean {float(mean.max()):.1f} >= {RECIPROCAL_MAX:g}: outside the Newton reciprocal's range "
            "(the private mpcformer mode stops here)"
        )
    return q * reciprocal_newton(mean) / L


def softmax_crypten(x, mask):
    e = exp_limit(x - x.max(-1, keepdims=True)) * mask
    return e * reciprocal_newton(e.sum(-1, keepdims=True))


def softmax_puma(x, mask):
    z = x - x.max(-1, keepdims=True)
    e = np.where(z < -14, 0.0, exp_limit(z)) * mask
    return e / e.sum(-1, keepdims=True)


def layernorm_exact(x, g, b, eps=0.0):
    d = x - x.mean(-1, keepdims=True)
    return d / np.sqrt((d * d).mean(-1, keepdims=True) + eps) * g + b


def layernorm_crypten(x, g, b, eps=0.0, sqrt_iters=INV_SQRT_ITERATIONS):
    d = x - x.mean(-1, keepdims=True)
    v = (d * d).mean(-1, keepdims=True) + max(eps, 2.0**-16)
    return d * reciprocal_newton(v * inv_sqrt_newton(v, sqrt_iters)) * g + b


MODES = {
    # mode: (gelu, softmax, layernorm, tanh)
    "exact": (gelu_exact, softmax_exact, layernorm_exact, np.tanh),
    "secformer": (gelu_secformer, softmax_2quad, layernorm_exact, tanh_fourier),
    "crypten": (gelu_crypten_tanh, softmax_crypten, layernorm_crypten, tanh_crypten),
    "puma": (gelu_puma, softmax_puma, layernorm_exact, tanh_fourier),
    "mpcformer": (gelu_quad, softmax_2quad_newton, layernorm_crypten, tanh_crypten),
}
