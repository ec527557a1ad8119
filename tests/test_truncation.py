"""Truncation never fails silently: the dealer-assisted protocol against local truncation.

Local (SecureML) truncation is off by about 2^(64 - f) with probability |x| / 2^64 per element;
a BERT query truncates millions of elements, so some queries would be wrong with no sign of it.
The protocol (:func:`secformer.protocols.base.truncate`) is exact up to 1 ulp for every |x| < 2^62.
"""

import numpy as np

from benchmarks.truncation import count_failures
from secformer.launch import run_local
from secformer.protocols import base
from secformer.session import Session
from tests.conftest import check

ULP = 2.0**-16


def test_exact_truncation_has_no_failure_where_local_truncation_fails_at_its_rate():
    r = count_failures(10**7, max_log2=61, seed=1)
    assert r["exact_failures"] == 0 and r["exact_max_err"] <= 1
    # the same trials under local truncation fail at |x| / 2^64 (about 4.4e4 here): within 5 sigma
    assert abs(r["local_failures"] - r["local_expected"]) < 5 * np.sqrt(r["local_expected"]), r


def test_exact_truncation_has_no_failure_in_1e8_trials_at_bert_magnitudes():
    """10^8 trials, |x| up to 2^52 ring units (2^20 in real units at scale 2^2f): about 17 s."""
    r = count_failures(10**8, max_log2=52, seed=2)
    assert r["exact_failures"] == 0 and r["exact_max_err"] <= 1
    assert r["local_failures"] > 0  # local truncation does fail at these magnitudes


BIG = np.concatenate([np.linspace(-(2.0**14), 2.0**14, 501), [0.0, ULP, -ULP, 30000.0, -30000.0]])
SMALL = np.linspace(-3, 3, BIG.size)


async def _products(sess: Session, inputs: dict) -> dict:
    """Products at large magnitudes through every truncation path: plain, raw (lazy) operands."""
    x = sess.input(0, inputs.get("x"), BIG.shape)
    y = sess.input(1, inputs.get("y"), SMALL.shape)

    async def prog(rt, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        xy = await base.mul(rt, xs, ys, lazy=True)  # raw x y (scale 2^2f, up to 2^62)
        a = await base.mul(rt, xy, ys)  # raw * plain
        b = await base.mul(rt, xy, await base.mul(rt, ys, ys, lazy=True))  # raw * raw
        c = await base.square(rt, await base.mul(rt, ys, ys, lazy=True))  # square of a raw
        d = await base.settle(rt, xy)
        e = await base.truncate(rt, xs * np.uint64(1 << 20), 20)  # |x| 2^36 -> x
        return np.stack([a, b, c, d, e])

    out = sess.protocol(prog, (5, *BIG.shape), x, y)
    return {"out": await sess.reveal(out), "rounds": sess.stats()["rounds"]}


def test_products_with_raw_operands_match_plaintext_at_large_magnitudes_over_tcp():
    r = run_local(_products, {"x": BIG}, {"y": SMALL})
    got = r.outputs[1]["out"]
    x, y = np.rint(BIG / ULP) * ULP, np.rint(SMALL / ULP) * ULP  # the encoded inputs
    want = [x * y * y, x * y * y * y, y**4, x * y, x]
    # each truncation is off by < 1 ulp, then multiplied by what follows it
    tol = 2 * ULP * (1 + np.abs(x * y) + np.abs(y) ** 3)
    for g, w, name in zip(got, want, ["raw*plain", "raw*raw", "square(raw)", "settle", "truncate"], strict=True):
        check(g, w, atol=tol, msg=name)
    assert np.abs(got[0] - want[0]).max() < 0.01  # and on the largest values (x y^2 ~ 2.7e5) no wrap
