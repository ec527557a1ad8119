"""Base protocols against float64 numpy, over real loopback TCP (three roles in one process)."""

import numpy as np
import pytest

from secformer.launch import run_local
from tests.conftest import check
from tests.programs import RING_EDGES, W_PUBLIC, ops, ops_inputs

ULP = 2.0**-16


@pytest.fixture(scope="module")
def run():
    in0, in1 = ops_inputs()
    r = run_local(ops, in0, in1)
    return r, in0, in1


def test_both_parties_reveal_identical_values(run):
    r, _, _ = run
    for k, v in r.outputs[0].items():
        if k not in ("stats", "mul_to_p1"):
            assert np.array_equal(v, r.outputs[1][k]), k


def test_reveal_to_one_party_only(run):
    r, in0, in1 = run
    assert r.outputs[0]["mul_to_p1"] is None
    check(r.outputs[1]["mul_to_p1"], in0["a"] * in1["b"], atol=2e-4, msg="mul to P1")


def test_linear_ops_within_encoding_error(run):
    r, in0, in1 = run
    o, a, b = r.outputs[0], in0["a"], in1["b"]
    check(o["add"], a + b, atol=2 * ULP, msg="add")
    check(o["sub"], a - b, atol=2 * ULP, msg="sub")
    check(o["neg"], -a, atol=ULP, msg="neg")
    check(o["pub_add"], a + 2.5, atol=2 * ULP, msg="public add")
    check(o["rsub"], 1.0 - a, atol=2 * ULP, msg="public minus secret")
    check(o["int_mul"], a * 3, atol=3 * ULP, msg="integer multiply is exact up to encoding")
    check(o["transpose"], a.T, atol=ULP, msg="transpose")
    check(o["slice"], a[2:5, ::2], atol=ULP, msg="slice")
    check(o["sum"], a.sum(axis=1), atol=32 * ULP, msg="sum")
    check(o["mean"], a.mean(axis=0), atol=4 * ULP, msg="mean")


def test_beaver_products_within_truncation_bound(run):
    # inputs |a|, |b| <= 4 carry encoding error 2^-17 each; truncation adds <= 1 ulp:
    # |err| <= (|a| + |b|) 2^-17 + 2^-16 <= 1.3e-4 elementwise.
    r, in0, in1 = run
    o, a, b, w = r.outputs[0], in0["a"], in1["b"], in0["w"]
    check(o["mul"], a * b, atol=1.3e-4, msg="mul")
    check(o["square"], a * a, atol=1.3e-4, msg="square")
    # public c: |a| 2^-17 (encoding of c) + |c| 2^-17 (encoding of a) + 2^-16 (truncation)
    check(o["pub_mul"], a * 0.37, atol=4 * 2**-17 + 0.37 * 2**-17 + ULP, msg="public mul")
    check(o["pub_div"], a / 3.0, atol=4 * 2**-17 + 2**-17 / 3 + ULP, msg="public div")
    # matmul: k = 32 terms, |a| <= 4, |w| <= 1: 32 * (4 + 1) * 2^-17 + 2^-16 <= 1.3e-3
    check(o["matmul"], a @ w, atol=1.3e-3, msg="matmul")
    check(o["batched_matmul"], (a.reshape(4, 16, 32) @ w), atol=1.3e-3, msg="batched matmul")
    check(o["pub_matmul"], a @ W_PUBLIC, atol=1.3e-3, msg="public matmul")
    check(o["pub_rmatmul"], W_PUBLIC.T @ a.T, atol=1.3e-3, msg="public left matmul")


def test_comparison_exact_on_fixed_point_values(run):
    r, _, in1 = run
    o = r.outputs[0]
    c_enc = np.rint(in1["c"] * 2**16) / 2**16  # what is actually shared
    assert np.array_equal(o["ltz"], (c_enc < 0).astype(float)), "ltz must be exact"
    assert np.array_equal(o["sign"], np.where(c_enc < 0, -1.0, 1.0)), "sign must be exact"
    assert np.array_equal(o["gt"], (c_enc > 0.5).astype(float)), "gt must be exact"


def test_comparison_exact_on_ring_extremes(run):
    r, _, _ = run
    expect = (RING_EDGES.view(np.int64) < 0).astype(float)
    assert np.array_equal(r.outputs[0]["edges_ltz"], expect)


def test_secret_less_than_secret(run):
    r, in0, in1 = run
    a = np.rint(in0["a"] * 2**16)
    b = np.rint(in1["b"] * 2**16)
    assert np.array_equal(r.outputs[0]["lt"], (a < b).astype(float))


def test_relu_within_one_ulp(run):
    r, _, in1 = run
    check(r.outputs[0]["relu"], np.maximum(in1["c"], 0), atol=ULP, msg="relu")


def test_costs_match_docstrings(run):
    r, _, _ = run
    s = r.outputs[0]["stats"]
    # every op above runs concurrently: rounds are the deepest chain, not the op count:
    # input check 1 + comparison/relu 8 + reveal 1 = 10; then the program waits for
    # all reveals and issues a * b (round 11), its truncation (12) and its reveal to P1 (round 13)
    assert s["rounds"] == 13, s
    assert s["frames"] >= s["rounds"]
    assert s["online_bytes_sent"] > 0 and s["dealer_requests"] >= 8


EDGES31 = np.array([0, 1, -1, 2**31 - 1, -(2**31), 2**30, -(2**30), 12345, -12345, 2**16, -(2**16)], dtype=np.int64)


async def _ltz31(sess, inputs):
    from secformer.protocols import base

    x = sess.input(0, inputs.get("x"), (inputs["n"],))
    edges = sess.input(0, np.zeros(EDGES31.size) if sess.party == 0 else None, EDGES31.shape)
    e = sess.local(lambda z: z + (EDGES31.view(np.uint64) if sess.party == 0 else 0), EDGES31.shape, edges)

    async def both(rt, xs, es):
        from secformer.runtime import gather

        (b1, p1), (b2, _) = await gather(base.ltz_mul(rt, xs, xs, bits=31), base.ltz_mul(rt, es, None, bits=31))
        return np.concatenate([b1 * np.uint64(rt.fx.scale), p1, b2 * np.uint64(rt.fx.scale)])

    n = inputs["n"]
    out = sess.protocol(both, (2 * n + EDGES31.size,), x, e)
    return {"out": await sess.reveal(out), "rounds": sess.stats()["rounds"]}


@pytest.mark.parametrize("netsim", [None, "wan"])
def test_31_bit_comparison_is_exact_within_its_range_in_fewer_rounds(netsim):
    """[x < 0] on the bits that |x| < 2^31 (ring units) needs: exact, including the range's ends;
    also on a delayed link (a sent frame may still be queued when the peer's answer arrives)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-30000, 30000, 2000), [0.0, 2**-16, -(2**-16), 32767.9, -32768.0]])
    r = run_local(_ltz31, {"x": x, "n": x.size}, {"n": x.size}, netsim=netsim)
    out = r.outputs[1]["out"]
    n = x.size
    xq = np.rint(x * 2**16) / 2**16
    assert np.array_equal(out[:n], (xq < 0).astype(float))
    check(out[n : 2 * n], np.minimum(xq, 0), atol=1e-9, msg="fused product [x < 0] x")
    assert np.array_equal(out[2 * n :], (EDGES31 < 0).astype(float))
    assert r.outputs[1]["rounds"] == 1 + 7 + 1  # input check, 7 comparison rounds, reveal


BAND = 2**15  # ring units: the coarse comparison's band (0.5 in real units at f = 16)
EDGES_COARSE = np.array(
    [BAND + 1, -(BAND + 1), 2**31 - BAND - 1, -(2**31) + BAND + 1, 2**20, -(2**20), 0, 1, -1, BAND - 1, -BAND],
    dtype=np.int64,
)


async def _ltz_coarse(sess, inputs):
    from secformer.protocols import base

    x = sess.input(0, inputs.get("x"), (inputs["n"],))
    edges = sess.input(0, np.zeros(EDGES_COARSE.size) if sess.party == 0 else None, EDGES_COARSE.shape)
    e = sess.local(lambda z: z + (EDGES_COARSE.view(np.uint64) if sess.party == 0 else 0), EDGES_COARSE.shape, edges)

    async def both(rt, xs, es):
        from secformer.runtime import gather

        (b1, p1), (b2, _) = await gather(
            base.ltz_mul(rt, xs, xs, bits=31, drop=15), base.ltz_mul(rt, es, None, bits=31, drop=15)
        )
        return np.concatenate([b1 * np.uint64(rt.fx.scale), p1, b2 * np.uint64(rt.fx.scale)])

    n = inputs["n"]
    out = sess.protocol(both, (2 * n + EDGES_COARSE.size,), x, e)
    return {"out": await sess.reveal(out), "rounds": sess.stats()["rounds"]}


def test_coarse_comparison_is_exact_outside_its_band_and_a_bit_inside_it():
    """drop=15: [x < 0] exact for 2^15 < |x| < 2^31 - 2^15 ring units, 0 or 1 inside the band;
    the fused product is then exactly 0 or x; one round fewer than the 31-bit comparison."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-30000, 30000, 2000), rng.uniform(-0.6, 0.6, 2000)])
    r = run_local(_ltz_coarse, {"x": x, "n": x.size}, {"n": x.size})
    out = r.outputs[1]["out"]
    n = x.size
    xi = np.rint(x * 2**16).astype(np.int64)
    xq = xi / 2**16
    bits, prod = out[:n], out[n : 2 * n]
    outside = np.abs(xi) > BAND
    assert np.array_equal(bits[outside], (xq[outside] < 0).astype(float))
    assert set(np.unique(bits[~outside])) <= {0.0, 1.0}
    assert (~outside).sum() > 1000 and 0 < bits[~outside].mean() < 1  # the band is exercised
    check(prod, bits * xq, atol=1e-9, msg="fused product b x")
    e = out[2 * n :]
    sure = np.abs(EDGES_COARSE) > BAND
    assert np.array_equal(e[sure], (EDGES_COARSE[sure] < 0).astype(float))
    assert set(np.unique(e[~sure])) <= {0.0, 1.0}
    assert r.outputs[1]["rounds"] == 1 + 6 + 1  # input check, 6 comparison rounds, reveal


def test_owner_linear_sends_one_bit_per_output_from_the_owner_and_folds_extra_bits():
    """matmul_owner: x (carrying one extra fractional bit) @ W equals x W / 2 within the
    truncation bound, in 2 rounds (one-way messages); P1 sends D and its truncation part (8 B per input and output
    element), P0 only msb(c): one bit per output element."""
    from tests.programs import owner_linear_costs

    rng = np.random.default_rng(9)
    w, x = rng.normal(0, 0.5, (16, 8)), rng.normal(0, 2, (32, 16))
    r = run_local(owner_linear_costs, {"w": w}, {"x": x})
    o0, o1 = r.outputs[0], r.outputs[1]
    xq, wq = np.rint(x * 2**16) / 2**16, np.rint(w * 2**16) / 2**16
    check(o1["y"], xq @ wq / 2, atol=2 * ULP, msg="owner linear with extra=1")
    assert o0["rounds"] == o1["rounds"] == 1 + 2  # x's input check, then the two one-way messages
    assert o1["bytes"] == 8 * (32 * 16 + 32 * 8)
    assert o0["bytes"] == 32 * 8 // 8


async def _ltz_fan4(sess, inputs):
    from secformer.protocols import base
    from secformer.runtime import gather

    vals = np.asarray(inputs["vals"], dtype=np.int64)
    z = sess.input(0, np.zeros(vals.size) if sess.party == 0 else None, vals.shape)
    v = sess.local(lambda a: a + (vals.view(np.uint64) if sess.party == 0 else 0), vals.shape, z)
    r0 = sess.stats()["rounds"]

    async def three(rt, xs):
        outs = await gather(*(base.ltz_mul(rt, xs, xs, bits=b, drop=d, fan=4) for b, d in ((63, 0), (31, 0), (31, 15))))
        return np.concatenate([np.concatenate([bit * np.uint64(rt.fx.scale), prod]) for bit, prod in outs])

    out = sess.protocol(three, (6 * vals.size,), v)
    await out.share()
    rounds = sess.stats()["rounds"] - r0
    return {"out": await sess.reveal(out), "rounds": rounds}


@pytest.mark.parametrize("netsim", [None, "wan"])
def test_radix4_comparison_is_exact_for_63_bits_31_bits_and_coarse_in_fewer_rounds(netsim):
    """fan=4 (the per-row buckets of LayerNorm and softmax): the radix-4 carry tree gives the
    same exact [x < 0] (and fused product) as the binary one, for every ring element with 63 bits,
    within +-2^31 with 31 bits (padded to 64 leaves), outside the band when coarse; 3 tree rounds
    instead of 6 (2 instead of 4 when coarse), so the three run in 5 rounds in all. Also on a
    delayed link, where a party's frame may still be queued when the peer's answer arrives (what
    was sent must not change afterwards)."""
    rng = np.random.default_rng(8)
    small = np.concatenate([rng.integers(-(2**31) + BAND + 2, 2**31 - BAND - 2, 3000), EDGES_COARSE])
    vals = np.concatenate([small, [2**62, -(2**62), 2**63 - 1, -(2**63), 2**40 + 7, -(2**40) - 7, 0, 1, -1]])
    r = run_local(_ltz_fan4, {"vals": vals}, {"vals": vals}, netsim=netsim)
    out = r.outputs[1]["out"]
    n = vals.size
    real = vals / 2**16
    parts = (
        [out[2 * i * n : (2 * i + 1) * n] for i in range(3)],
        [out[(2 * i + 1) * n : (2 * i + 2) * n] for i in range(3)],
    )
    (b63, b31, bco), (p63, _, pco) = parts
    assert np.array_equal(b63, (vals < 0).astype(float)), "63 bits: every ring element"
    m = small.size
    assert np.array_equal(b31[:m], (small < 0).astype(float)), "31 bits within +-2^31"
    sure = np.abs(small) > BAND
    assert np.array_equal(bco[:m][sure], (small[sure] < 0).astype(float)), "coarse, outside the band"
    check(pco[:m], bco[:m] * real[:m], atol=1e-9, msg="coarse fused product")
    fits = np.abs(vals) < 2**46  # the revealed product is a fixed-point value
    check(p63[fits], np.minimum(real[fits], 0), atol=1e-9, msg="fused product [x < 0] x")
    assert r.outputs[1]["rounds"] == 1 + 1 + 3 + 1  # input check; open, 3 radix-4 levels, conversion
