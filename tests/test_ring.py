import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secformer import ring
from secformer.prg import PRG, random_uint64

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.integers(0, 2**64, shape, dtype=np.uint64)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (70, 80, 90), (128, 300, 64), (4, 4100, 3)])
def test_matmul_exact_against_python_integers(shape):
    m, k, n = shape
    a, b = rand(m, k), rand(k, n)
    assert np.array_equal(ring.matmul(a, b), ring.matmul_reference(a, b))


@pytest.mark.parametrize(
    "v", [1 << 21, 2**64 - 1, 1 << 63, 0x0010_0000_0020_0000, 0xFFFF_FC00_001F_FFFF, 0x7FFF_FFFF_FFFF_FFFF]
)
def test_matmul_exact_at_limb_extremes_over_long_sums(v):
    a = np.full((3, 4200), v, np.uint64)
    b = np.full((4200, 2), v, np.uint64)
    assert np.array_equal(ring.matmul(a, b), ring.matmul_reference(a, b))


@pytest.mark.parametrize("k", [896, 3072])  # Karatsuba's longest unchunked sum; a chunked one
def test_karatsuba_products_exact_where_the_sums_of_limbs_are_largest(k, monkeypatch):
    """(a0 + a1)(b0 + b1) peaks near (1.5 * 2^21)^2 per term. With rows of elements at the
    extreme limbs (l0, l1) = (1 - 2^21, -2^20), whose sums and products are odd (a partial sum
    rounded past 2^53 would show: a 2048-term chunk fails here), the products of uniform
    matrices, and of pre-split ones with a kept limb sum on two threads, stay exact."""
    monkeypatch.setattr(ring, "THREADED_MATMUL", 1 << 12)
    lo, hi = 0x23FF_FFE0_0001, 0x3FF_FF9F_FFFF  # limbs (1 - 2^21, -2^20, 5) and (2^21 - 1, 2^20 - 2, 0)
    a = np.full((4, k), lo, np.uint64)
    a[0, 3::7] = 0  # odd partial sums: a sum rounded past 2^53 would lose its last bit
    a[1] = rand(k)
    a[2] = hi
    b = np.full((k, 3), lo, np.uint64)
    b[:, 1] = rand(k)
    ref = ring.matmul_reference(a, b)
    assert np.array_equal(ring.matmul(a, b), ref)
    assert np.array_equal(ring.matmul(ring.Limbs(a), ring.Limbs(b).keep_sum()), ref)


def test_matmul_batched_vector_and_presplit_operands():
    a, b = rand(2, 3, 4, 5), rand(5, 6)
    ref = np.stack([np.stack([ring.matmul_reference(a[i, j], b) for j in range(3)]) for i in range(2)])
    assert np.array_equal(ring.matmul(a, b), ref)
    v = rand(5)
    assert np.array_equal(ring.matmul(a[0, 0], v), ring.matmul_reference(a[0, 0], v[:, None])[:, 0])
    w = rand(100, 90)
    x = rand(80, 100)
    assert np.array_equal(ring.matmul(x, ring.Limbs(w)), ring.matmul_reference(x, w))


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("shape", [(12, 128, 64, 128), (2, 8, 4100, 9)])  # attention heads; K chunked
def test_batched_matmul_above_the_small_size_is_exact_per_batch_element(shape, threaded, monkeypatch):
    """Large batched products take the stacked-limb path (Karatsuba's, or the six products past
    4096 terms), also with their rows split over two threads; each batch element, including one
    with a broadcast operand, equals the exact product."""
    if threaded:
        monkeypatch.setattr(ring, "THREADED_MATMUL", 1 << 12)
    B, M, K, N = shape
    a, b = rand(B, M, K), rand(B, K, N)
    a[0, 0, :] = 2**64 - 1  # limb extremes
    b[-1, :, 0] = 2**63
    out = ring.matmul(a, b)
    for i in (0, B - 1):
        assert np.array_equal(out[i], ring.matmul_reference(a[i], b[i]))
    shared = ring.matmul(a, b[0])  # b broadcast over the batch
    assert np.array_equal(shared[-1], ring.matmul_reference(a[-1], b[0]))


@pytest.mark.parametrize("shape", [(3, 5, 7), (64, 4100, 9), (8, 2048, 1024)])  # K chunked; two threads
def test_matmul_with_a_one_limb_weight_is_exact_at_the_limb_extremes(shape, monkeypatch):
    """The model owner's product: any ring matrix @ a weight within [-2^21, 2^21) (one limb)."""
    m, k, n = shape
    monkeypatch.setattr(ring, "THREADED_MATMUL", 1 << 12)
    ext = np.array([0, 1, 2**64 - 1, 1 << 63, (1 << 63) - 1, 0xFFFF_FC00_001F_FFFF], np.uint64)
    a = np.where(RNG.random((m, k)) < 0.5, ext[RNG.integers(0, 6, (m, k))], rand(m, k))
    wv = np.array([-(1 << 21), (1 << 21) - 1, 0, -1], np.int64)
    w = wv[RNG.integers(0, 4, (k, n))].view(np.uint64)
    W = ring.Limbs(w)
    assert W.limbs.shape[0] == 1
    cols = slice(0, min(n, 16))  # the reference is slow: check every row on some columns
    assert np.array_equal(ring.matmul(a, W)[:, cols], ring.matmul_reference(a, w[:, cols]))


def test_matmul_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        ring.matmul(rand(3, 4), rand(5, 6))


def _shares(x_int):
    s0 = random_uint64(x_int.shape)
    return s0, x_int.view(np.uint64) - s0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**40), max_value=2**40), st.integers(min_value=1, max_value=30))
def test_truncation_error_at_most_one_ulp_for_small_values(x, d):
    xs = np.full(64, x, dtype=np.int64)
    s0, s1 = _shares(xs)
    y = (ring.truncate_share(s0, d, 0) + ring.truncate_share(s1, d, 1)).view(np.int64)
    assert np.all(np.abs(y - (xs >> d)) <= 1)


def test_truncation_failure_rate_matches_bound_statistically():
    # |x| = 2^56: failure probability |x| / 2^64 = 1/256 (<= bound |x|/2^63). 200k samples.
    n, d = 200_000, 16
    x = np.full(n, 2**56 + 2**15, dtype=np.int64)  # fractional part 1/2
    s0, s1 = _shares(x)
    y = (ring.truncate_share(s0, d, 0) + ring.truncate_share(s1, d, 1)).view(np.int64)
    err = np.abs(y - (x >> d))
    fails = int(np.sum(err > 1))
    p = 2.0**56 / 2.0**64
    mean, sd = n * p, np.sqrt(n * p * (1 - p))
    assert abs(fails - mean) < 6 * sd, (fails, mean)
    assert np.all((err <= 1) | (err > 2**40)), "errors are either <= 1 ulp or a wrap"
    # the +1 lands with probability ~ the fractional part (1/2 here): rounding is unbiased
    ok = err <= 1
    assert 0.45 < float(np.mean((y - (x >> d))[ok])) < 0.55


def test_pack_unpack_bits_roundtrip():
    w = rand(1000)
    for nb in (1, 3, 7, 13, 63):
        mask = np.uint64((1 << nb) - 1)
        assert np.array_equal(ring.unpack_bits(ring.pack_bits(w, nb), 1000, nb), w & mask)


def _even_bits(w: int, pairs: int) -> int:
    return sum(((w >> (2 * j)) & 1) << j for j in range(pairs))


@pytest.mark.parametrize("pairs", [32, 8, 4, 1])
def test_carry_tree_level_planes_and_and_gates_match_plain_python(pairs):
    """One level of the comparison's carry tree on both parties (XOR shares, Beaver ANDs):
    the wire planes hold element i's fields at bit pairs*i (including a partial last word), and
    the opened level yields G' = Gh ^ Ph&Gl, P' = Ph&Pl of the shared G, P."""
    n = 1000  # not a multiple of 64 / pairs: the last word is partial
    lo = (1 << pairs) - 1
    G, P = rand(n), rand(n)
    shares = [(rand(n), rand(n)) for _ in range(2)]
    shares[1] = (G ^ shares[0][0], P ^ shares[0][1])
    a, b1, b2 = rand(n), rand(n), rand(n)
    c1, c2 = (a & b1), (a & b2)
    ta = [rand(n), None]
    ta[1] = a ^ ta[0]
    tb1 = [rand(n), None]
    tb1[1] = b1 ^ tb1[0]
    tb2 = [rand(n), None]
    tb2[1] = b2 ^ tb2[0]
    tc1 = [rand(n), None]
    tc1[1] = c1 ^ tc1[0]
    tc2 = [rand(n), None]
    tc2[1] = c2 ^ tc2[0]
    sent = [ring.ltz_level_send(g, p, ta[i], tb1[i], tb2[i], 0, pairs) for i, (g, p) in enumerate(shares)]
    size = (n * pairs + 7) // 8
    for plane, var in zip(sent[0][1], ("Ph^a", "Gl^b1", "Pl^b2"), strict=True):
        bits = int.from_bytes(plane.view(np.uint8)[:size].tobytes(), "little")
        i = n - 1
        g, p = int(shares[0][0][i]), int(shares[0][1][i])
        want = {
            "Ph^a": _even_bits(p >> 1, pairs) ^ (int(ta[0][i]) & lo),
            "Gl^b1": _even_bits(g, pairs) ^ (int(tb1[0][i]) & lo),
            "Pl^b2": _even_bits(p, pairs) ^ (int(tb2[0][i]) & lo),
        }[var]
        assert (bits >> (pairs * i)) & lo == want, var
    opened = sent[0][1] ^ sent[1][1]
    out = [
        ring.ltz_level_recv(sent[i][0], opened, ta[i], tb1[i], tb2[i], tc1[i], tc2[i], 0, pairs, i) for i in range(2)
    ]
    g_new, p_new = out[0][0] ^ out[1][0], out[0][1] ^ out[1][1]
    for i in (0, 1, 63, 64, 500, n - 1):
        g, p = int(G[i]), int(P[i])
        gh, gl, ph, pl = (_even_bits(v, pairs) for v in (g >> 1, g, p >> 1, p))
        assert int(g_new[i]) == gh ^ (ph & gl)
        assert int(p_new[i]) == ph & pl


def test_prg_streams_deterministic_and_distinct():
    k = bytes(range(16))
    a, b = PRG(k), PRG(k)
    assert np.array_equal(a.uint64(5, 1, (3, 4)), b.uint64(5, 1, (3, 4)))
    assert not np.array_equal(a.uint64(5, 1, 100), a.uint64(5, 2, 100))
    assert not np.array_equal(a.uint64(5, 1, 100), a.uint64(6, 1, 100))
    bits = a.uint64(9, 0, 100_000)
    ones = np.unpackbits(bits.view(np.uint8)).mean()
    assert abs(ones - 0.5) < 0.005


def test_roles_switch_numpy_to_ordinary_pages():
    """no_huge_pages (called at every role's start) turns numpy's huge-page requests off."""
    from numpy._core.multiarray import _set_madvise_hugepage

    before = _set_madvise_hugepage(True)
    try:
        assert ring.no_huge_pages()
        assert _set_madvise_hugepage(True) is False  # the switch was off
    finally:
        _set_madvise_hugepage(before)
