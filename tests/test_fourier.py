"""The secure Fourier series and the power-of-two normalisation, against numpy."""

import numpy as np

from secformer.launch import run_local
from secformer.material import Trig
from secformer.protocols import base
from secformer.protocols import secformer as S
from secformer.protocols.fourier import fourier_series
from tests.conftest import check

RNG = np.random.default_rng(11)
X = np.concatenate([RNG.uniform(-40, 40, 3000), [0.0, 8.0, -8.0, 16.0, 1000.0]])
SIN, COS, C0 = RNG.normal(0, 1, 5), RNG.normal(0, 1, 3), 0.7


async def prog(sess, inputs):
    t = sess.input(0, inputs.get("x"), X.shape)
    v = sess.input(0, inputs.get("v"), (9,))

    async def series(rt, a):
        return await fourier_series(rt, a, 4, SIN, COS, C0)

    async def opened(rt, a):  # what P1 sees of the masked input: x - t
        m = await rt.material(Trig(a.shape, k=1, bits=20, f=16))
        return np.uint64(0) + await base.open_(rt, a - m["t"]) * np.uint64(0) + (await base.open_(rt, a - m["t"]))

    async def norm(rt, a):
        w, s = await S.normalize_pow2(rt, a, 1, -8, 15)
        return np.stack([await base.open_(rt, w), await base.open_(rt, s)])

    y = sess.protocol(series, X.shape, t)
    z = sess.protocol(opened, X.shape, t)
    n = sess.protocol(norm, (2, 9), v)
    return await sess.reveal(y), await z.share(), await n.share()


def test_fourier_series_matches_numpy_for_every_input_by_periodicity():
    v = np.array([2.0**-9, 0.3, 0.5, 1.0, 3.0, 100.0, 1000.0, 20000.0, 32767.0])
    r = run_local(prog, {"x": X, "v": v}, {})
    y, _, _ = r.outputs[0]
    k = np.arange(1, 6)
    w = 2 * np.pi / 16
    ref = C0 + np.sin(np.outer(X, k) * w) @ SIN + np.cos(np.outer(X, k[:3]) * w) @ COS
    bound = (np.abs(SIN).sum() + np.abs(COS).sum() + 8) * 2.0**-16
    check(y, ref, atol=bound, msg="Fourier series")


def test_fourier_opening_is_uniform_whatever_the_input():
    """The opened x - t is uniform in Z_2^64 (perfect hiding): its top byte is flat even for
    x = 0 everywhere, unlike the paper's bounded real mask."""
    zeros = np.zeros_like(X)
    r = run_local(prog, {"x": zeros, "v": np.ones(9)}, {})
    _, opened, _ = r.outputs[0]
    top = (opened >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top, minlength=256)
    expected = top.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400, chi2  # 255 degrees of freedom: p < 1e-7 above 400


def test_normalize_pow2_gives_exact_bucket_and_mantissa():
    v = np.array([2.0**-9, 0.3, 0.5, 1.0, 3.0, 100.0, 1000.0, 20000.0, 32767.0])
    r = run_local(prog, {"x": X, "v": v}, {})
    _, _, n = r.outputs[0]
    w = n[0].view(np.int64) / 2**16
    s = n[1].view(np.int64)
    k = np.floor(np.log2(v))
    k = np.maximum(k, -9)  # below 2^-8 everything is bucket lo - 1
    check(w, v * 2.0 ** -(k + 1), atol=2.0**-15, msg="w = v 2^-(k+1)")
    assert np.array_equal(s, (2.0 ** (15 - k)).astype(np.int64))
