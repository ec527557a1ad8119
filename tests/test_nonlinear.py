"""SecFormer's non-linear protocols and the baselines against float64 numpy, with explicit bounds.

Input ranges (tests/programs.nonlinear_inputs) cover what BERT activations take: GeLU inputs in
[-10, 10] plus far outliers, LayerNorm rows with standard deviations 0.1..30, attention scores
N(0, 3) clipped to [-15, 15] with a padding mask.
"""

import math

import numpy as np
import pytest

from secformer import coeffs
from secformer.launch import run_local, run_processes
from tests.conftest import check
from tests.programs import LN_EPS, SCORE_MASK, nonlinear, nonlinear_inputs

ULP = 2.0**-16
X = nonlinear_inputs()


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def layernorm(x, g, b, eps=0.0):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + b


def softmax(x, m, exp=np.exp):
    e = exp(x - x.max(-1, keepdims=True)) * m
    return e / e.sum(-1, keepdims=True)


def exp_limit(z):  # CrypTen/PUMA's exp: (1 + z/2^8)^(2^8)
    return (1 + z / 256) ** 256


def exp_puma(z):
    return np.where(z < -14, 0.0, exp_limit(z))


def quad2(x, m):
    q = (x + 5) ** 2 * m
    return q / q.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def out():
    return run_local(nonlinear, X, {}).outputs[0]


def test_gelu_secformer_error_below_fit_bound_on_bert_range(out):
    y, rounds = out["gelu_secformer"]
    check(y, gelu(X["gelu"]), atol=coeffs.G_BOUND + 3 * ULP, msg="SecFormer GeLU")
    assert rounds == 6  # coarse comparisons: a 4-level tree


def test_gelu_secformer_doubled_is_twice_gelu_within_the_same_bound(out):
    """double=True (for a caller that folds the halving into its own truncation): 2 GeLU, with
    the same error once halved, and no more rounds; the coarse comparisons' band (+-0.5 around
    +-5) is covered densely by the inputs (step 0.01)."""
    y, rounds = out["gelu_secformer_double"]
    check(y / 2, gelu(X["gelu"]), atol=coeffs.G_BOUND + 3 * ULP, msg="SecFormer GeLU, doubled")
    assert rounds == 6


def test_gelu_secformer_opens_the_series_and_x_once_for_both_comparisons(out):
    """The series stays untruncated until the comparisons' last round opens it, and x is opened
    once for both bit products: 2 x 7.9 (comparisons) + 2.5 (phase) + 16 = 34.3 B per element
    (42.3 with the halving of x), not 8 (J + 1) = 24 B for the products and the series' truncation."""
    n = X["gelu"].size
    per = {k: out["bytes_sent"][k] / n for k in ("gelu_secformer_double", "gelu_secformer")}
    assert 34.3 <= per["gelu_secformer_double"] < 35.5, per
    assert 42.3 <= per["gelu_secformer"] < 43.5, per


def test_gelu_paper_form_error_below_bound(out):
    y, rounds = out["gelu_secformer_erf"]
    check(y, gelu(X["gelu"]), atol=coeffs.ERF_BOUND + 3 * ULP, msg="paper-form GeLU")
    assert rounds == 7  # 31-bit comparisons: a 5-level tree


def test_tanh_fourier_error_below_bound(out):
    y, rounds = out["tanh_fourier"]
    check(y, np.tanh(X["gelu"]), atol=coeffs.TANH_BOUND + 3 * ULP, msg="tanh")
    assert rounds == 7  # 31-bit comparisons: a 5-level tree


def test_puma_gelu_within_its_polynomial_fit_error(out):
    y, rounds = out["gelu_puma"]
    # PUMA's published polynomials are off by up to 1.8e-2 (at the -1.95 seam); fixed point adds ~1e-4
    check(y, gelu(X["gelu"]), atol=2e-2, msg="PUMA GeLU")
    assert rounds == 8


def test_crypten_gelu_accurate_only_inside_its_taylor_range(out):
    y, _ = out["gelu_crypten"]
    x = X["gelu"]
    inside = np.abs(x) <= 2.0
    check(y[inside], gelu(x[inside]), atol=5e-3, msg="CrypTen GeLU, |x| <= 2")
    assert np.max(np.abs(y - gelu(x))[np.abs(x) >= 5]) > 1.0, "the Taylor erf must fail far out"


def test_quad_gelu_is_the_quadratic(out):
    y, rounds = out["gelu_quad"]
    x = X["gelu"][np.abs(X["gelu"]) <= 10]
    check(y[: x.size], 0.125 * x**2 + 0.25 * x + 0.5, atol=4 * ULP + 1e-4, msg="Quad")
    assert rounds == 2  # the square, then its truncation (exact: one opening)


def test_secformer_protocols_keep_their_bounds_on_a_delayed_link():
    """Under `wan` a party's frame waits 20 ms in its send queue, so the peer's answer often
    arrives first: GeLU, LayerNorm and 2Quad keep their accuracy there (no protocol changes an
    array after handing it to the link)."""
    only = "gelu_secformer,layernorm_secformer,softmax_2quad"
    o = run_local(nonlinear, {**X, "only": only}, {"only": only}, netsim="wan").outputs[0]
    check(o["gelu_secformer"][0], gelu(X["gelu"]), atol=coeffs.G_BOUND + 3 * ULP, msg="GeLU, wan")
    check(o["layernorm_secformer"][0], layernorm(X["ln"], X["gamma"], X["beta"]), atol=6e-4, msg="LayerNorm, wan")
    check(o["softmax_2quad"][0], quad2(X["scores"], SCORE_MASK), atol=1e-4, msg="2Quad, wan")


def test_layernorm_secformer_accurate_for_every_variance(out):
    y, rounds = out["layernorm_secformer"]
    ref = layernorm(X["ln"], X["gamma"], X["beta"])
    # outputs up to ~4.6 |gamma|; fixed-point resolution of d relative to the row's std dominates
    check(y, ref, atol=6e-4, msg="SecFormer LayerNorm")
    assert rounds == 11  # radix-4 bucket (5), the start from its fused products, 3 one-round iterations


def test_layernorm_secformer_opens_each_element_once_before_its_last_product(out):
    """d is opened once for its square and for d gamma, and the rescaling by the bucket rides in
    Goldschmidt's start: 24 B per element (the opening of d, the last product, its truncation)
    plus the per-row comparisons and the per-column gamma, not 40 + those."""
    per = out["bytes_sent"]["layernorm_secformer"] / X["ln"].size
    rows = X["ln"].shape[0]
    per_row = (66 + 2) * 39.75 + 8 * 16  # the bucket's comparisons, Goldschmidt's per-row products
    assert 24 <= per < 24 + (per_row * rows + 8 * 768 + 4096) / X["ln"].size, per


def test_layernorm_secformer_keeps_its_accuracy_up_to_the_largest_gain_it_accepts():
    """|gamma| sqrt(n) just below 2^14 (gains up to about 570 at n = 768), and rows with a single
    outlier where the largest gain is (|d| / std = sqrt(n - 1), the most LayerNorm can give): the
    last product stays inside the ring, and the error grows only with gamma."""
    g = X["gamma"] / np.abs(X["gamma"]).max() * (2.0**14 * 0.99 / math.sqrt(768))
    x = X["ln"].copy()
    x[:2] = np.random.default_rng(5).normal(0, 1e-3, (2, 768))
    x[:2, np.argmax(np.abs(g))] = [5.0, -300.0]
    inputs = {**X, "ln": x, "gamma": g, "only": "layernorm_secformer"}
    y, _ = run_local(nonlinear, inputs, {"only": "layernorm_secformer"}).outputs[0]["layernorm_secformer"]
    ref = layernorm(x, g, X["beta"])
    assert np.abs(ref).max() > 0.98 * 2**14
    check(y, ref, atol=6e-4 * np.abs(g).max(), msg="LayerNorm with the largest gains")


def test_layernorm_secformer_eps_costs_no_round(out):
    y, rounds = out["layernorm_secformer_eps"]
    check(y, layernorm(X["ln"], X["gamma"], X["beta"], LN_EPS), atol=6e-4, msg="SecFormer LayerNorm, eps")
    assert rounds == 11


def test_layernorm_crypten_baseline_accurate_for_bounded_variance(out):
    """CrypTen's 1/sqrt with 8 Newton steps covers std ~0.053..17.9 (variance 0.0028..320)."""
    y, rounds = out["layernorm_crypten"]
    assert X["ln_ok"].std(-1).max() < 17
    check(y, layernorm(X["ln_ok"], X["gamma"], X["beta"]), atol=2e-2, msg="CrypTen LayerNorm, std in (0.1, 17)")
    assert rounds == 73


def test_layernorm_crypten_beyond_its_variance_range_stops_every_role():
    """Above variance 320, exp(-v/2) by the limit leaves its range and the output would be
    garbage (rows of std 30): the range check stops the run instead, naming the op."""
    from secformer import OutOfRangeError

    with pytest.raises(OutOfRangeError, match=r"row variance < 320: 2 of 12 values outside"):
        run_local(nonlinear, {**X, "only": "layernorm_crypten_all"}, {"only": "layernorm_crypten_all"})


def test_2quad_masked_positions_get_exactly_zero_weight(out):
    y, rounds = out["softmax_2quad"]
    check(y, quad2(X["scores"], SCORE_MASK), atol=1e-4, msg="2Quad")
    assert np.all(y[1, ..., 21:] == 0)
    check(y.sum(-1), np.ones(y.shape[:-1]), atol=2e-3, msg="rows sum to 1")
    assert rounds == 14  # radix-4 bucket (5); 5 Goldschmidt iterations from [1/2, 1), the first also truncates w


def test_2quad_opens_each_score_for_its_square_and_truncation_only(out):
    """(x + c) is opened for its square and q for its truncation; that opening is kept for the
    last product, and the rescaling by the bucket rides in Goldschmidt's numerator: 24 B per
    score (the two openings, the output's truncation) plus the per-row work, not 40 + that."""
    per = out["bytes_sent"]["softmax_2quad"] / X["scores"].size
    per_row = (24 + 2) * 39.75 + 5 * 32 + 64  # the bucket's comparisons, Goldschmidt, the last opening
    assert 24 <= per < 24 + per_row / X["scores"].shape[-1], per


def test_2quad_newton_baseline(out):
    """The reciprocal of the row mean (about 30) is about 1/30 at a resolution of 2^-16: 5e-4
    relative per ulp, so weights near 0.4 move by 2e-4 with one ulp of the truncations' random
    rounding (measured: 1.5e-4 or 2.1e-4 depending on the masks)."""
    y, rounds = out["softmax_2quad_newton"]
    check(y, quad2(X["scores"], SCORE_MASK), atol=3e-4, msg="2Quad Newton")
    assert rounds == 34


@pytest.mark.parametrize("name, rounds, exp", [("softmax_crypten", 81, exp_limit), ("softmax_puma", 64, exp_puma)])
def test_exact_softmax_baselines(out, name, rounds, exp):
    """MPC error against the same approximation in float64: the 8 squarings of the exp limit
    amplify the 1-ulp rounding of 1 + z/256 by 2^8, i.e. 256 * 2^-16 = 0.4% relative (<= 5e-3 on
    weights <= 1). The approximation itself is off by up to 2e-2 from the true softmax."""
    y, r = out[name]
    check(y, softmax(X["scores"], SCORE_MASK, exp), atol=5e-3, msg=f"{name} vs its float64 approximation")
    check(y, softmax(X["scores"], SCORE_MASK), atol=3e-2, msg=f"{name} vs softmax")
    assert np.all(np.abs(y[1, ..., 21:]) < 1e-9)
    assert r == rounds


def _argmax_agrees(idx, x, margin=1e-3):
    """The private argmax equals numpy's wherever the two largest entries differ by > margin."""
    top2 = np.sort(x, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > margin
    assert idx.shape == x.shape[:-1]
    assert clear.mean() > 0.9
    assert np.array_equal(np.rint(idx)[clear], np.argmax(x, axis=-1)[clear])


def test_argmax_tournament_finds_the_largest_entry(out):
    idx, rounds = out["argmax"]
    _argmax_agrees(idx, X["scores"])
    assert rounds == 9 * 5  # 32 entries: 5 levels of one comparison and one product


def test_every_protocol_family_over_three_processes():
    ops = "gelu_secformer,gelu_secformer_double,tanh_fourier,layernorm_secformer,layernorm_secformer_eps,softmax_2quad"
    ops += ",argmax"
    ops += ",gelu_puma,softmax_crypten,gelu_crypten_tanh,layernorm_crypten"
    run = run_processes("tests.programs:nonlinear", X, {}, timeout=300, extra_env={"SECFORMER_TEST_OPS": ops})
    o = run.outputs[1]
    assert set(o) == {*ops.split(","), "bytes_sent"}
    _argmax_agrees(o["argmax"][0], X["scores"])
    check(o["gelu_secformer"][0], gelu(X["gelu"]), atol=coeffs.G_BOUND + 3 * ULP, msg="GeLU (processes)")
    check(o["gelu_secformer_double"][0] / 2, gelu(X["gelu"]), atol=coeffs.G_BOUND + 3 * ULP, msg="2 GeLU (processes)")
    check(o["tanh_fourier"][0], np.tanh(X["gelu"]), atol=coeffs.TANH_BOUND + 3 * ULP, msg="tanh (processes)")
    check(o["layernorm_secformer"][0], layernorm(X["ln"], X["gamma"], X["beta"]), atol=6e-4, msg="LN (processes)")
    with_eps = layernorm(X["ln"], X["gamma"], X["beta"], LN_EPS)
    check(o["layernorm_secformer_eps"][0], with_eps, atol=6e-4, msg="LN with eps (processes)")
    assert np.abs(with_eps - layernorm(X["ln"], X["gamma"], X["beta"])).max() > 0.1, "eps must matter here"
    check(o["softmax_2quad"][0], quad2(X["scores"], SCORE_MASK), atol=1e-4, msg="2Quad (processes)")
    check(o["gelu_puma"][0], gelu(X["gelu"]), atol=2e-2, msg="PUMA GeLU (processes)")
    check(
        o["softmax_crypten"][0],
        softmax(X["scores"], SCORE_MASK, exp_limit),
        atol=5e-3,
        msg="CrypTen softmax (processes)",
    )
    # the crypten mode's GeLU and LayerNorm, at the iteration counts the private models use
    x = X["gelu"]
    inside = np.abs(x) <= 10
    y_gelu = o["gelu_crypten_tanh"][0]
    check(y_gelu[inside], gelu(x[inside]), atol=5e-3, msg="CrypTen tanh-GeLU (processes)")
    assert np.all(np.abs(y_gelu[~inside] - gelu(x[~inside])) > 1), "valid only for x < 30.6, as documented"
    y_ln = o["layernorm_crypten"][0]
    check(y_ln, layernorm(X["ln_ok"], X["gamma"], X["beta"]), atol=2e-2, msg="CrypTen LN (processes)")
    assert o["gelu_crypten_tanh"][1] == 33 and o["layernorm_crypten"][1] == 73
