"""The secure Fourier series and the power-of-two normalisation, against numpy."""

import asyncio

import numpy as np
import pytest

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


UNIT = 768 << 32  # a LayerNorm row sum of 768 squares at scale 2^2f


async def rsqrt_prog(sess, inputs):
    small = sess.input(0, inputs.get("small"), inputs["shapes"][0])  # variances < 64, times 2^8
    large = sess.input(0, inputs.get("large"), inputs["shapes"][1])  # variances >= 64, over 4

    async def start(rt, a, b):  # S = 768 var at scale 2^2f, exactly from either encoding
        v = np.concatenate([a * np.uint64(UNIT >> 24), b * np.uint64(UNIT >> 14)])
        x0, y0, s, its = await S.normalize_rsqrt(rt, v, S.LN_LO, S.LN_HI, UNIT)
        sq = await base.square(rt, base.raw_rsub(rt, 3.0, x0), extra=2)  # a raw square with bits > 32
        # x0 raw with 44 pending bits (W^3 != 0), y0 ordinary; then one Goldschmidt step's x (34
        # bits: W^2 != 0) and y (raw, 17 bits)
        x1, x2, x3, y1, xy = await base.powers_mul(rt, x0, y0)
        f = np.uint64(rt.fx.frac_bits)
        xs = base.Raw((np.uint64(9) * x1 << (f + f)) - (np.uint64(6) * x2 << f) + x3, 2 * rt.fx.frac_bits + 2)
        ys = base.Raw((np.uint64(3) * y1 << f) - xy, rt.fx.frac_bits + 1)
        u1, _, u3, v1, uv = await base.powers_mul(rt, xs, ys)
        pw = [x1, await base.truncate(rt, x2), await base.truncate(rt, x3, 32), await base.truncate(rt, xy)]
        pw += [u1, await base.truncate(rt, u3, 32), v1, await base.truncate(rt, uv)]
        x0 = await base.settle(rt, x0)
        opened = [await base.open_(rt, t) for t in (x0, y0, s, sq, *pw)]
        return np.stack([*opened, np.full_like(x0, its)])

    n = sum(inputs["shapes"][0]) + sum(inputs["shapes"][1])
    out = sess.protocol(start, (13, n), small, large)
    return await out.share()


def test_normalize_rsqrt_starts_goldschmidt_near_one_and_one_opening_gives_its_powers():
    f = 16
    edges = 4.0 ** (np.arange(S.LN_LO * 4, (S.LN_HI + 1) * 4) / 4)  # every sub-bucket edge
    var = np.concatenate([edges, edges * 1.001, edges * 0.999, 10 ** RNG.uniform(-4.8, 4.8, 200)])
    var = var[(var >= 4.0**S.LN_LO) & (var < 4.0 ** (S.LN_HI + 1))]
    small = np.rint(var[var < 64] * 2 ** (f + 8)) / 2 ** (f + 8)  # as encoded
    large = np.rint(var[var >= 64] * 2 ** (f - 2)) / 2 ** (f - 2)
    shapes = [list(small.shape), list(large.shape)]
    r = run_local(rsqrt_prog, {"small": small * 2**8, "large": large / 4, "shapes": shapes}, {"shapes": shapes})
    x0, y0, s, sq, *pw, its = (a.view(np.int64) for a in r.outputs[0])
    x0, y0, sq = x0 / 2**f, y0 / 2**f, sq / 2**f
    x1, x2, x3, xy, u1, u3, v1, uv = (p / 2**f for p in pw)
    var = np.concatenate([small, large])
    k = np.floor(np.log(var) / np.log(4) + 1e-12)
    w = var * 4.0 ** -(k + 1)
    assert np.array_equal(s, (2.0 ** (S.LN_HI - k)).astype(np.int64)), "s' = 2^(hi - k)"
    assert x0.min() > 0.78 and x0.max() < 1.25, (x0.min(), x0.max())
    check(x0, y0**2 * w, atol=4 * 2.0**-f, msg="x0 = y0^2 w")
    check(sq, (3 - x0) ** 2 / 4, atol=4 * 2.0**-f, msg="(3 - x0)^2 / 4 from a raw with 44 pending bits")
    assert (its == 3).all()
    # one opening of x for x, x^2, x^3 and x y (Goldschmidt's one-round iteration)
    check(x1, x0, atol=2 * 2.0**-f, msg="x from a raw with 44 pending bits")
    check(x2, x1**2, atol=4 * 2.0**-f, msg="x^2")
    check(x3, x1**3, atol=8 * 2.0**-f, msg="x^3 (W^3 m term)")
    check(xy, x1 * y0, atol=4 * 2.0**-f, msg="x y, y ordinary")
    check(u1, x1 * (3 - x1) ** 2 / 4, atol=8 * 2.0**-f, msg="x' = x (3 - x)^2 / 4, raw with 34 pending bits")
    check(v1, y0 * (3 - x1) / 2, atol=4 * 2.0**-f, msg="y' = y (3 - x) / 2, raw with 17 pending bits")
    check(u3, u1**3, atol=8 * 2.0**-f, msg="x'^3 (W^2 m terms)")
    check(uv, u1 * v1, atol=4 * 2.0**-f, msg="x' y', both raw")


def test_product_of_two_raw_operands_refuses_more_than_64_pending_bits():
    with pytest.raises(ValueError, match="bits_a \\+ bits_b <= 64"):
        asyncio.run(base._mul_raw(None, base.Raw(np.zeros(2, np.uint64), 44), base.Raw(np.zeros(2, np.uint64), 21)))


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
