"""Base protocols over additive shares in Z_2^64 (two parties + dealer).

Conventions: shares are uint64 arrays; fixed-point values carry f fractional bits
(``rt.fx.frac_bits``). "Rounds" are communication rounds between P0 and P1; "bytes" are payload
bytes each party sends per element (frame headers excluded). Dealer bytes are what the dealer
sends to P1 per element (P0's share comes from a seed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from secformer import ring
from secformer.material import (
    FAN4_MONOMIALS,
    FAN4_TERMS,
    FAN4_VARS,
    Ltz,
    LtzLin,
    Matmul,
    Mul,
    MulR,
    PowMulR,
    Square,
    SquareMulR,
    SquareR,
    Trunc,
    fan4_leaves,
    fan4_name,
    fan4_offsets,
    ltz_level_offsets,
)

_ONE = np.uint64(1)


def _is0(rt) -> bool:
    return rt.party == 0


# ------------------------------------------------------------------------------ opening


async def open_(rt, x: np.ndarray) -> np.ndarray:
    """Reconstruct x to both parties. 1 round, 8 B/element."""
    (other,) = await rt.exchange(np.ascontiguousarray(x))
    return x + other


async def open_many(rt, *xs: np.ndarray) -> list[np.ndarray]:
    """Open several tensors in one message. 1 round, 8 B/element."""
    others = await rt.exchange(*[np.ascontiguousarray(x) for x in xs])
    return [x + o for x, o in zip(xs, others, strict=True)]


async def open_low(rt, x: np.ndarray, nbits: int) -> np.ndarray:
    """Reconstruct x mod 2^nbits to both parties (as uint64). Each party sends only the low
    ``nbits`` of its share, packed: 1 round, nbits/8 B per element. For callers that need no
    more of x than its residue (e.g. a phase mod 2^(p+f), or a masked value on its low bits)."""
    if not 1 <= nbits <= 64:
        raise ValueError(f"open_low needs 1 <= nbits <= 64, not {nbits}")
    if nbits == 64:
        return await open_(rt, x)
    mine = np.ascontiguousarray(x).ravel() & _low(nbits)
    return (await _open_low_masked(rt, mine, nbits)).reshape(x.shape)


async def _open_low_masked(rt, mine: np.ndarray, nbits: int) -> np.ndarray:
    """:func:`open_low` of a flat share already reduced mod 2^nbits (nbits < 64)."""
    (theirs,) = await rt.exchange(_pack([mine], nbits))
    (other,) = _unpack(theirs, mine.size, nbits, 1)
    return (mine + other) & _low(nbits)


async def reveal_to(rt, x: np.ndarray, to: int) -> np.ndarray | None:
    """Reconstruct x to party ``to`` only. 1 one-way message, 8 B/element from the other."""
    got = await rt.transfer(1 - to, [np.ascontiguousarray(x)])
    if got is None:
        return None
    return x + got[0]


# ------------------------------------------------------------------------------ local ops


def add_public(rt, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x + c for public ring values c (P0 adds). 0 rounds."""
    return x + c if _is0(rt) else x + np.zeros_like(c)


_TWO62 = np.uint64(1 << 62)


async def truncate(rt, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """floor(x / 2^bits) (default bits = f), exact up to +1 ulp for every |x| < 2^62.

    Probabilistic truncation with the dealer's mask and its top bit (Escudero et al. 2020, as in
    SPU's Semi2k ``TruncAPr``): the dealer shares r (uniform in Z_2^64), r >> bits and msb(r).
    The parties open c = x + 2^62 + r; since y = x + 2^62 lies in [0, 2^63), y + r wraps exactly
    when msb(r) = 1 and msb(c) = 0, so

        floor(y / 2^bits) = (c >> bits) - (r >> bits) + msb(r) (1 - msb(c)) 2^(64 - bits) - borrow,

    with the borrow (0 or 1) of the low bits left out: the result is floor(x / 2^bits) or one more.
    Unlike local (SecureML) truncation, which is off by about 2^(64 - bits) with probability
    |x| / 2^64, it never fails for |x| < 2^62; c is uniform, so nothing leaks.
    Rounds: 1. Bytes: 8 per element. Dealer: 16 per element (r >> bits and msb(r) mod 2^bits).
    """
    b = rt.fx.frac_bits if bits is None else int(bits)
    if b == 0 or x.size == 0:
        return x
    m = await rt.material(Trunc(x.shape, b))
    c = await open_(rt, add_public(rt, x, _TWO62) + m["r"])
    return truncate_finish(rt.party, c, m["rhi"], m["msb"], b)


def truncate_finish(party: int, c: np.ndarray, rhi: np.ndarray, msb: np.ndarray, bits: int) -> np.ndarray:
    """The local step of :func:`truncate` after c = x + 2^62 + r is open: this party's share of
    P - R + W m (:func:`_raw_decompose`)."""
    P, W = _raw_decompose(c, bits)
    out = W * msb - rhi
    if party == 0:
        out += P
    return out


def _raw_decompose(c: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """x / 2^bits = P - R + W m for an opened c = x + 2^62 + r, with R = r >> bits and m = msb(r)
    shared: the public P = (c >> bits) - 2^(62 - bits) and W = (1 - msb(c)) 2^(64 - bits)."""
    b = np.uint64(bits)
    P = (c >> b) - np.uint64(1 << (62 - bits))
    W = (_ONE - (c >> np.uint64(63))) << (np.uint64(64) - b)
    return P, W


def _raw_split(c: np.ndarray, bits: int, m: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, W, s) of :func:`_raw_decompose`, with s = W m - R this party's share of x / 2^bits - P
    (``m``, ``R``: its shares of msb(r) and r >> bits)."""
    P, W = _raw_decompose(c, bits)
    return P, W, W * m - R


def _const_exponent(c: np.ndarray) -> int:
    """Extra fractional bits e for a public constant: max|c| 2^e in [1/2, 1) for small constants."""
    top = float(np.max(np.abs(c))) if c.size else 0.0
    return min(30, int(np.floor(-np.log2(top))) - 1) if 0 < top < 0.5 else 0


def mul_const_raw(rt, x: np.ndarray, c, e: int | None = None) -> tuple[np.ndarray, int]:
    """x * c for a public real c, not yet truncated: returns (z, bits) with x c = z / 2^bits
    (at the scale of x). c is encoded with ``e`` extra fractional bits (default: enough that a
    small constant keeps 16 significant bits). 0 rounds."""
    c = np.asarray(c, dtype=np.float64)
    e = _const_exponent(c) if e is None else e
    enc = np.rint(c * float(1 << (rt.fx.frac_bits + e))).astype(np.int64).view(np.uint64)
    return x * enc, rt.fx.frac_bits + e


async def mul_const(rt, x: np.ndarray, c) -> np.ndarray:
    """x * c for a public real c (scalar or broadcastable array). 1 round (:func:`truncate`).

    Error: 1 ulp + |x| 2^-(f+e+1), e the constant's extra bits (:func:`mul_const_raw`)."""
    z, bits = mul_const_raw(rt, x, c)
    return await truncate(rt, z, bits)


async def lincomb_const(rt, terms: list[tuple[np.ndarray, float]], const: float = 0.0, extra: int = 0) -> np.ndarray:
    """const + sum_k c_k x_k for public reals c_k, with one truncation for all terms. 1 round.

    Every c_k keeps the precision :func:`mul_const` gives it: terms are brought to the finest
    encoding among them by exact shifts before the one truncation. ``extra``: the x_k carry that
    many more fractional bits than f (e.g. f for untruncated products), removed by the same
    truncation. The caller keeps sum |c_k x_k| 2^(2f + e + extra) below 2^62, e the finest
    constant's extra bits (with extra = f: |sum| < 2^(30 - f - e))."""
    es = [_const_exponent(np.asarray(c, dtype=np.float64)) for _, c in terms]
    top = max(es)
    acc = None
    for (x, c), e in zip(terms, es, strict=True):
        z, _ = mul_const_raw(rt, x, c, e)
        z = z << np.uint64(top - e)
        acc = z if acc is None else acc + z
    out = await truncate(rt, acc, rt.fx.frac_bits + top + extra)
    if const:
        out = add_public(rt, out, np.uint64(np.int64(round(const * rt.fx.scale))))
    return out


# ------------------------------------------------------------------------------ Beaver products


@dataclass(frozen=True)
class Raw:
    """A product not yet truncated: its value, at scale 2^f, is z / 2^bits.

    :func:`mul` and :func:`square` take it as an operand and fold its truncation into their own
    opening: instead of the Beaver opening x - a they open c = z + 2^62 + r, which both truncates
    (as in :func:`truncate`) and serves as the product's opening. A chain of products then costs
    one round per product, as with local truncation, but never fails. :func:`settle` truncates
    explicitly (1 round). Valid while |z| < 2^62.
    """

    z: np.ndarray
    bits: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.z.shape


def raw_rsub(rt, c: float, x: Raw) -> Raw:
    """c - x for a public real c: still raw, no round."""
    enc = np.uint64(np.int64(round(c * rt.fx.scale))) << np.uint64(x.bits)
    return Raw(add_public(rt, np.uint64(0) - x.z, enc), x.bits)


async def settle(rt, x: np.ndarray | Raw) -> np.ndarray:
    """An ordinary share of x: truncates a :class:`Raw` (1 round), returns other shares as they are."""
    return await truncate(rt, x.z, x.bits) if isinstance(x, Raw) else x


def _raw_open(rt, x: Raw, r: np.ndarray) -> np.ndarray:
    return add_public(rt, x.z, _TWO62) + r


async def mul(
    rt, x: np.ndarray | Raw, y: np.ndarray | Raw, trunc: bool = True, extra: int = 0, lazy: bool = False
) -> np.ndarray | Raw:
    """Elementwise product of two shared tensors (Beaver), numpy broadcasting.

    1 round; 8 B per element of each operand (so a per-row factor costs per row only);
    dealer 8 B per output element. With ``trunc`` the result is rescaled by 2^-(f + extra)
    (:func:`truncate`: one more round, 8 B and dealer 16 B per output element); with ``lazy`` it
    is returned as a :class:`Raw` instead, for the next product to truncate at no round.
    Either operand may be :class:`Raw`: its truncation rides in this product's opening (same
    round, same bytes; dealer 16 B more per raw operand element and 8-16 B per output element).
    """
    if isinstance(x, Raw) or isinstance(y, Raw):
        z = await _mul_raw(rt, x, y)
    else:
        if x.shape == y.shape:
            t = await rt.material(Mul(x.shape))
        else:
            t = await rt.material(Mul(x.shape, y.shape))
        e, f = await open_many(rt, x - t["a"], y - t["b"])
        z = t["c"] + e * t["b"] + t["a"] * f
        if _is0(rt):
            z += e * f
    if lazy:
        return Raw(z, rt.fx.frac_bits + extra)
    return await truncate(rt, z, rt.fx.frac_bits + extra) if trunc else z


async def _mul_raw(rt, x: np.ndarray | Raw, y: np.ndarray | Raw) -> np.ndarray:
    """x y with at least one :class:`Raw` operand, untruncated (material ``mulr``).

    Each operand is p + s with p public after the opening and s shared: an ordinary one is
    e + a (e = x - a opened), a raw one P - R + W m (c = z + 2^62 + r opened). Then
    x y = p_x p_y + p_x s_y + s_x p_y + s_x s_y, where the dealer's cross products give s_x s_y:
    a b; (-R + W m) b = -Rb + W mb; and for two raw operands RR' - W' R m' - W m R' (W W' = 0
    in the ring, since they are multiples of 2^(64 - bits_a) and 2^(64 - bits_b): bits_a + bits_b <= 64).
    """
    ba = x.bits if isinstance(x, Raw) else 0
    bb = y.bits if isinstance(y, Raw) else 0
    if ba + bb > 64:
        raise ValueError(f"a product of two raw operands needs bits_a + bits_b <= 64, got {ba} + {bb}")
    t = await rt.material(MulR(x.shape, y.shape, ba, bb))
    return _raw_product(rt, *(await _open_operands(rt, x, y, t)), t)


async def _open_operands(rt, x, y, t) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Open x and y with the masks of a ``mulr``-shaped material ``t`` (one round): each as p + s,
    p public and s this party's share (:func:`_mul_raw`), with W public (0 for an ordinary operand)."""
    ba = x.bits if isinstance(x, Raw) else 0
    bb = y.bits if isinstance(y, Raw) else 0
    ox = _raw_open(rt, x, t["ra"]) if ba else x - t["a"]
    oy = _raw_open(rt, y, t["rb"]) if bb else y - t["b"]
    cx, cy = await open_many(rt, ox, oy)
    if ba:
        px, Wx, sx = _raw_split(cx, ba, t["ma"], t["Ra"])
    else:
        px, sx, Wx = cx, t["a"], None
    if bb:
        py, Wy, sy = _raw_split(cy, bb, t["mb"], t["Rb"])
    else:
        py, sy, Wy = cy, t["b"], None
    return px, sx, Wx, py, sy, Wy


def _raw_product(rt, px, sx, Wx, py, sy, Wy, t) -> np.ndarray:
    """x y from the opened operands of :func:`_open_operands` and the dealer's cross products."""
    if Wx is not None and Wy is not None:
        cross = t["RaRb"] - Wy * t["Ramb"] - Wx * t["maRb"]
    elif Wx is not None:
        cross = Wx * t["mab"] - t["Rab"]
    else:
        cross = Wy * t["amb"] - t["aRb"]
    z = cross + px * sy + sx * py
    if _is0(rt):
        z += px * py
    return z


async def powers_mul(rt, x: Raw, y: np.ndarray | Raw) -> tuple[np.ndarray, ...]:
    """(x, x^2, x^3, y, x y) for a raw x and a raw or ordinary y of the same shape, untruncated
    (scales 2^f, 2^2f, 2^3f, 2^f, 2^2f): x and y are each opened once (material ``powmulr``).

    With x = P + s, s = W m - R (:func:`_raw_decompose`): s^2 = R^2 - 2 W R m + W^2 m and
    s^3 = W^3 m - 3 W^2 R m + 3 W R^2 m - R^3 (m^k = m; W^2 vanishes for bits <= 32, W^3 for
    bits <= 42), the dealer giving R^2, R m, R^3, R^2 m. 1 round; 8 B per element of x and of y;
    dealer 72-96 B per element. Valid while |x| 2^(3f) < 2^62 and the raw values below 2^62.
    """
    by = y.bits if isinstance(y, Raw) else 0
    if x.bits + by > 64:
        raise ValueError(f"powers_mul needs bits_x + bits_y <= 64, got {x.bits} + {by}")
    t = await rt.material(PowMulR(x.shape, x.bits, by))
    px, sx, W, py, sy, Wy = await _open_operands(rt, x, y, t)
    m, Rm = t["ma"], t["Ram"]
    W2 = W * W
    s2 = t["Ra2"] - np.uint64(2) * W * Rm + W2 * m
    s3 = W2 * W * m - np.uint64(3) * W2 * Rm + np.uint64(3) * W * t["Ra2m"] - t["Ra3"]
    x1, y1 = sx.copy(), sy.copy()
    x2 = np.uint64(2) * px * sx + s2
    x3 = np.uint64(3) * px * px * sx + np.uint64(3) * px * s2 + s3
    if _is0(rt):
        x1 += px
        y1 += py
        x2 += px * px
        x3 += px * px * px
    return x1, x2, x3, y1, _raw_product(rt, px, sx, W, py, sy, Wy, t)


def _raw_square(rt, P: np.ndarray, W: np.ndarray, s: np.ndarray, t, bits: int) -> np.ndarray:
    """x^2 for an opened raw x = P + s, s = W m - R (material fields R, m, RR, Rm):
    P^2 + 2 P s + R^2 - 2 W R m + W^2 m (W^2 m vanishes in the ring only for bits <= 32)."""
    z = np.uint64(2) * P * s + t["RR"] - np.uint64(2) * W * t["Rm"]
    if bits > 32:
        z += W * W * t["m"]
    if _is0(rt):
        z += P * P
    return z


async def square(rt, x: np.ndarray | Raw, trunc: bool = True, extra: int = 0, lazy: bool = False) -> np.ndarray | Raw:
    """x^2 elementwise (Beaver square pair). 1 round, 8 B/element; dealer 8 B. With ``trunc``,
    rescaled by 2^-(f + extra) (:func:`truncate`: one more round); ``lazy`` returns a
    :class:`Raw`. A raw x is truncated in the same opening (material ``squarer``, dealer 32 B):
    x = P + s with s = -R + W m, x^2 = P^2 + 2 P s + R^2 - 2 W R m + W^2 m (W^2 = 0 in the ring
    when x.bits <= 32; W^2 m needs m only mod 2^bits otherwise)."""
    if isinstance(x, Raw):
        t = await rt.material(SquareR(x.shape, x.bits))
        c = await open_(rt, _raw_open(rt, x, t["r"]))
        P, W, s = _raw_split(c, x.bits, t["m"], t["R"])
        z = _raw_square(rt, P, W, s, t, x.bits)
    else:
        t = await rt.material(Square(x.shape))
        e = await open_(rt, x - t["a"])
        z = t["c"] + np.uint64(2) * e * t["a"]
        if _is0(rt):
            z += e * e
    if lazy:
        return Raw(z, rt.fx.frac_bits + extra)
    return await truncate(rt, z, rt.fx.frac_bits + extra) if trunc else z


@dataclass(frozen=True)
class Held:
    """A truncation's opening kept for one later product (:func:`truncate_held`): the value is
    P + s (P public, s = W m - R this party's share); ``t`` is the product's ``mulr`` material."""

    P: np.ndarray
    s: np.ndarray
    W: np.ndarray
    t: dict
    bits_b: int


async def truncate_held(
    rt, z: np.ndarray, bits: int, shape_b: tuple[int, ...], bits_b: int = 0
) -> tuple[np.ndarray, Held]:
    """z / 2^bits (as :func:`truncate`: 1 round, 8 B per element), keeping its opening so that
    one later product with a y of ``shape_b`` (:func:`mul_held`; y raw with ``bits_b`` pending
    bits, or ordinary) needs no opening of this value. The opening is that of a raw operand of
    :func:`mul` (material ``mulr``), made early."""
    t = await rt.material(MulR(z.shape, tuple(shape_b), bits, bits_b))
    c = await open_(rt, _raw_open(rt, Raw(z, bits), t["ra"]))
    P, W, s = _raw_split(c, bits, t["ma"], t["Ra"])
    return (s + P if _is0(rt) else s.copy()), Held(P, s, W, t, bits_b)


async def mul_held(rt, x: Held, y: np.ndarray | Raw) -> np.ndarray:
    """x y, untruncated, for x kept by :func:`truncate_held`: only y is opened (its truncation
    too if it is raw), as in :func:`_mul_raw`. 1 round, 8 B per element of y (a per-row y: per
    row only); dealer as ``mulr``."""
    by = y.bits if isinstance(y, Raw) else 0
    t = x.t
    if by != x.bits_b or y.shape != (t["rb"] if by else t["b"]).shape:
        raise ValueError(f"mul_held: y {y.shape} with {by} pending bits, the material's {x.bits_b}")
    if by:
        py, Wy, sy = _raw_split(await open_(rt, _raw_open(rt, y, t["rb"])), by, t["mb"], t["Rb"])
    else:
        py, sy, Wy = await open_(rt, y - t["b"]), t["b"], None
    return _raw_product(rt, x.P, x.s, x.W, py, sy, Wy, t)


async def square_mul(rt, x: Raw, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x^2, x y), both untruncated (scale 2^2f), for a raw x and an ordinary y broadcast to x's
    shape: x is opened once (c = z + 2^62 + r, its truncation) for both products.

    With x = P + s, s = -R + W m (:func:`_raw_decompose`) and y = e + b (e = y - b opened in
    the same round): x^2 as in :func:`square`, and x y = P e + P b + s e + W (m b) - R b, the
    dealer giving R b and m b. 1 round; 8 B per element of x and of y. Dealer: 32 (the square)
    + 16 per element of x. Valid while |z| < 2^62 and |x y| < 2^(62 - 2f).
    """
    t = await rt.material(SquareMulR(x.shape, y.shape, x.bits))
    c, e = await open_many(rt, _raw_open(rt, x, t["r"]), y - t["b"])
    P, W, s = _raw_split(c, x.bits, t["m"], t["R"])
    sq = _raw_square(rt, P, W, s, t, x.bits)
    xy = P * t["b"] + s * e + W * t["mb"] - t["Rb"]
    if _is0(rt):
        xy += P * e
    return sq, xy


async def matmul(rt, x: np.ndarray, y: np.ndarray, trunc: bool = True) -> np.ndarray:
    """Shared x (..., m, k) @ shared y (..., k, n) (Beaver matrix triple).

    1 round; 8(mk + kn) B per party; dealer 8 mn B. Local cost: two ring matmuls.
    """
    t = await rt.material(Matmul(x.shape, y.shape))
    e, f = await open_many(rt, x - t["a"], y - t["b"])
    rhs = t["b"] + f if _is0(rt) else t["b"]
    z = t["c"] + ring.matmul(e, rhs) + ring.matmul(t["a"], f)
    return await truncate(rt, z) if trunc else z


# ------------------------------------------------------------------------------ comparison


def _low(n: int) -> np.uint64:
    return np.uint64((1 << n) - 1) if n < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)


def _pack(words: list[np.ndarray], nbits: int) -> np.ndarray:
    """Wire form of several n-bit values per element: native ints when n is 8/16/32."""
    if nbits in (8, 16, 32):
        dt = {8: np.uint8, 16: np.uint16, 32: np.uint32}[nbits]
        return np.concatenate([w.astype(dt).view(np.uint8) for w in words])
    word = words[0]
    for k, w in enumerate(words[1:], start=1):
        word = word | (w << np.uint64(k * nbits))
    return ring.pack_bits(word, nbits * len(words))


def _unpack(data: np.ndarray, n: int, nbits: int, count: int) -> list[np.ndarray]:
    if nbits in (8, 16, 32):
        dt = {8: np.uint8, 16: np.uint16, 32: np.uint32}[nbits]
        flat = data.view(dt).astype(np.uint64)
        return [flat[k * n : (k + 1) * n] for k in range(count)]
    word = ring.unpack_bits(data, n, nbits * count)
    if count == 1:
        return [word]  # already nbits wide
    lo = _low(nbits)
    return [(word >> np.uint64(k * nbits)) & lo for k in range(count)]


async def ltz(rt, x: np.ndarray) -> np.ndarray:
    """Shares (integer scale: 0 or 1) of [x < 0], i.e. the sign bit of x in Z_2^64.

    Exact for every ring element. Dealer supplies r (additive), the bits of r (XOR-shared),
    63 AND triples (one per gate of a 6-level tree, packed in words) and a random bit in both
    sharings. Steps: open c = x + r; then msb(x) = c63 ^ r63 ^ [c mod 2^63 < r mod 2^63],
    the comparison of public c with shared r by a carry tree (G, P) over 64 leaves;
    finally XOR-to-additive conversion with the random bit.

    Rounds: 8 (1 open + 6 tree levels + 1 conversion).
    Bytes per element and party: 8 + 3*63/8 + 1/8 = 31.75. Dealer: 32 B/element.
    """
    bit, _ = await ltz_mul(rt, x, None)
    return bit


def _check_ltz(bits: int, drop: int) -> None:
    if bits not in (63, 31):
        raise ValueError(f"ltz compares 63 or 31 bits, not {bits}")
    if drop not in (0, 15) or (drop and bits != 31):
        raise ValueError(f"ltz drops 0 or (with bits=31) 15 low bits, not {drop}")


async def _open_planes(rt, planes: np.ndarray, size: int) -> np.ndarray:
    """XOR-open the bit planes (k, words) of a carry-tree level: the first ``size`` bytes of each
    plane travel (no copy), and the opened planes go to a new array. Never in place: a frame may
    still wait in the send queue (a shaped link, a slow socket) when the peer's answer is here."""
    mine = [plane.view(np.uint8)[:size] for plane in planes]
    got = await rt.exchange(*mine)
    opened = np.zeros_like(planes)
    for out, a, b in zip(opened.view(np.uint8), mine, got, strict=True):
        np.bitwise_xor(a, b, out=out[:size])
    return opened


def _fan4_subsets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The radix-4 terms as subset rows for :func:`secformer.ring.fan4_level_recv`: for every term
    t (``FAN4_TERMS``) and every subset S of its operands, (t, the operands outside S as four
    indices into ``FAN4_VARS``, padded with 7 for none, the mask product of S: 0..6 one mask, 7..
    a monomial of ``FAN4_MONOMIALS``, -1 for S empty)."""
    terms, outs, fields = [], [], []
    for ti, term in enumerate(FAN4_TERMS):
        for k in range(len(term) + 1):
            for inside in itertools.combinations(term, k):
                out = [FAN4_VARS.index(v) for v in term if v not in inside]
                terms.append(ti)
                outs.append(out + [7] * (4 - len(out)))
                fields.append(
                    -1 if k == 0 else FAN4_VARS.index(inside[0]) if k == 1 else 7 + FAN4_MONOMIALS.index(inside)
                )
    return np.array(terms, np.int64), np.array(outs, np.int64), np.array(fields, np.int64)


_FAN4_SUBSETS = _fan4_subsets()


def _fan4_masks(m) -> tuple[np.ndarray, ...]:
    """The radix-4 material as one tuple of flat arrays: the seven operands' masks, then the
    mask products of ``FAN4_MONOMIALS`` (indices as in :func:`_fan4_subsets`)."""
    names = [fan4_name((v,)) for v in FAN4_VARS] + [fan4_name(mono) for mono in FAN4_MONOMIALS]
    return tuple(np.ascontiguousarray(m[k]).ravel() for k in names)


async def _fan4_level(
    rt, G: np.ndarray, P: np.ndarray, Q: tuple[np.ndarray, ...], off: int, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """One level of the radix-4 carry tree (material ``ltz`` with fan 4, gathered by
    :func:`_fan4_masks`; this level's bits of every field start at ``off``): the seven operands
    of every group of four nodes are opened masked (7 bits per group), and each product of k of
    them is the XOR over subsets S of (the opened values outside S) AND (the dealer's share of
    the product of the masks in S). 1 round, 7 ``groups`` bits per element."""
    G3, planes = ring.fan4_level_send(G, P, Q, off, groups)
    opened = await _open_planes(rt, planes, ring.level_plane_bytes(G.size, groups))
    return ring.fan4_level_recv(G3, opened, Q, off, groups, *_FAN4_SUBSETS, rt.party)


async def _ltz_tree(rt, x: np.ndarray, m, bits: int, drop: int, fan: int = 2) -> np.ndarray:
    """XOR shares (flat, one bit per element) of [x < 0]: the opening of c and the carry tree of
    :func:`ltz_mul`, all its rounds but the last (the conversion). ``fan`` 4: a radix-4 tree
    (levels of 16, 4, 1 groups: 3 rounds for 64 leaves instead of 6)."""
    p0 = _is0(rt)
    flat = lambda a: np.ascontiguousarray(a).ravel()  # noqa: E731
    n = x.size
    if bits == 63:
        c = flat(await open_(rt, x + m["r"]))
    else:  # 31 bits: x + 2^31 >= 0; with drop, bits drop..31 of each share: their sum is
        # (c >> drop) - carry, carry in {0, 1}
        add = np.uint64(1 << bits) if p0 else np.uint64(0)
        c = await _open_low_masked(rt, ring.ltz_mask_low(x, m["r"], add, drop, 32 - drop), 32 - drop)
    k = bits - drop  # compared bits; the leaf above them (bit k) is the result's top bit
    top = np.uint64(k)
    R = flat(m["rbits"])
    fill = np.uint64(0) if drop else np.uint64(1) << top  # neutral top leaf (63 + 1 or 31 + 1 leaves)
    if fan == 4 and fan4_leaves(bits, drop) > k + (0 if drop else 1):  # neutral leaves above the top
        fill |= ~np.uint64(0) << top
    G, P = ring.ltz_leaves(c, R, k, fill, rt.party)
    if fan == 4:
        Q = _fan4_masks(m)
        for off, groups in fan4_offsets(bits, drop):
            G, P = await _fan4_level(rt, G, P, Q, off, groups)
    else:
        ta, tb1, tb2 = flat(m["ta"]), flat(m["tb1"]), flat(m["tb2"])
        tc1, tc2 = flat(m["tc1"]), flat(m["tc2"])
        for off, pairs in ltz_level_offsets(k):
            Gh, planes = ring.ltz_level_send(G, P, ta, tb1, tb2, off, pairs)
            opened = await _open_planes(rt, planes, ring.level_plane_bytes(n, pairs))
            G, P = ring.ltz_level_recv(Gh, opened, ta, tb1, tb2, tc1, tc2, off, pairs, rt.party)
    # P0 adds bit 63 of x, or bit 31 of x + 2^31 (that is [x >= 0], so flipped)
    return ring.ltz_root(G, R, c, k, int(bits != 63), rt.party)


async def ltz_mul(
    rt, x: np.ndarray, y, bits: int = 63, drop: int = 0, fan: int = 2
) -> tuple[np.ndarray, np.ndarray | None]:
    """([x < 0], [x < 0] * y): a comparison whose bit multiplies y in its last round.

    ``y`` (same shape as x, any fixed-point scale, or an awaitable of it) is needed only in
    the last round, so it may still be computing while the comparison tree runs. The product
    is exact (no truncation): with t = b ^ s opened and e = y - m opened in the same round,
    b y = t y + (1 - 2t)(e s + s m), where the dealer supplies s (both sharings), m and s m.

    Rounds: 8, as :func:`ltz`. Bytes: 31.75 + 8 per element. Dealer: 32 + 8 per element.

    ``bits=31`` compares only what values within +-2^31 need (|x| < 2^15 in real units at
    f = 16, the fixed-point range): x + 2^31 lies in [0, 2^32), so x >= 0 is its bit 31, that is
    c31 ^ r31 ^ [c mod 2^31 < r mod 2^31] for the opened c = x + 2^31 + r mod 2^32 (only those
    32 bits are opened). The carry tree has 32 leaves: 7 rounds, 4 + 3*31/8 + 1/8 = 15.75 B per
    element, dealer 4 + 4 + 4 + 8 = 20 B (+8 with the product). Outside that range the bit is
    wrong: callers document the range.

    ``drop=15`` (with ``bits=31``) is a *coarse* comparison for thresholds that tolerate a band:
    each party opens only bits 15..31 of its share of c (c's low bits and their carry are never
    formed), and the tree compares 16 bits. The result is [x' < 0] for some x' within 2^15 ulp
    of x (0.5 in real units at f = 16), so it is exact for |x| > 2^15 ulp and either value
    inside that band; the range is |x| < 2^31 - 2^15 ulp. 6 rounds, 17/8 + 3*15/8 + 1/8 = 7.9 B
    per element (+8 with the product); dealer 4 + 2 + 2 + 8 = 16 B (+8).

    ``fan=4``: a radix-4 carry tree (:func:`_fan4_level`): 64 leaves in 3 levels instead of 6
    (5 rounds for 63 bits), 7 bits opened per group of four (147 bits per element for 64
    leaves, against 189), dealer 22 products per group (about 88 B per element): for per-row
    comparisons, where rounds count and bytes do not.
    """
    _check_ltz(bits, drop)
    shape = x.shape
    with_mul = y is not None
    m = await rt.material(Ltz(shape, int(with_mul), bits, drop, fan))
    p0 = _is0(rt)
    flat = lambda a: np.ascontiguousarray(a).ravel()  # noqa: E731
    n = x.size
    bit = await _ltz_tree(rt, x, m, bits, drop, fan)
    # XOR -> additive: t = bit ^ s opened; bit = t + s - 2ts (and the fused product)
    sb, sa = flat(m["sb"]), flat(m["sa"])
    mine = bit ^ sb
    packed = np.packbits(mine.astype(np.uint8), bitorder="little")
    if with_mul:
        if hasattr(y, "get"):
            y = await y.get()
        yv = flat(np.broadcast_to(y, shape))
        ey = yv - flat(m["ma"])
        theirs, their_ey = await rt.exchange(packed, ey)
        ey = ey + their_ey
    else:
        (theirs,) = await rt.exchange(packed)
    t = mine ^ np.unpackbits(theirs, count=n, bitorder="little").astype(np.uint64)
    sign = _ONE - np.uint64(2) * t  # 1 - 2t as a ring element (+1 or -1)
    out = sa * sign
    if p0:
        out += t
    prod = None
    if with_mul:
        prod = t * yv + sign * (ey * sa + flat(m["msa"]))
    return out.reshape(shape), None if prod is None else prod.reshape(shape)


async def ltz_mul_lin(
    rt,
    x: np.ndarray,
    g,
    gbits: int,
    h,
    alpha: tuple[int, ...],
    beta: tuple[int, ...],
    bits: int = 31,
    drop: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """([x_j < 0], [x_j < 0] (alpha_j g + beta_j h)) for J blocks x_j = x[j] of g's shape.

    Like :func:`ltz_mul`, with every block's multiplicand a public integer combination of the same
    two tensors: g, a :class:`Raw` share still to be truncated by ``gbits``, and h, an ordinary
    share (g and h, or awaitables of them, are needed only in the last round). In that round
    each party sends, besides its conversion bits, c = g + 2^62 + r (8 B per element of g: g's
    truncation, as in :func:`mul`) and h - a (8 B per element of h), once for all blocks. With g = P - R + W m
    (:func:`_raw_decompose`) and h = e + a, s_j g and s_j h come from the dealer's s_j R,
    s_j m, s_j a, and b y = t y + (1 - 2t) s y as in :func:`ltz_mul`.
    Rounds: those of the comparison (6 coarse, 7 with 31 bits). Bytes per element of g: J times
    the comparison's, + 16; against J products and g's own truncation, 8 (J + 1). Dealer: J x
    (the comparison + 24) + 24. Error: g's truncation (1 ulp), as :func:`truncate`.
    """
    _check_ltz(bits, drop)
    J = len(alpha)
    if len(beta) != J or x.ndim < 1 or x.shape[0] != J:
        raise ValueError(f"ltz_mul_lin: x {x.shape} must be {J} blocks, one per coefficient")
    gshape = x.shape[1:]
    m = await rt.material(LtzLin(gshape, J, gbits, bits, drop))
    flat = lambda a: np.ascontiguousarray(a).ravel()  # noqa: E731
    bit = await _ltz_tree(rt, x, m, bits, drop)
    mine = bit ^ flat(m["sb"])
    packed = np.packbits(mine.astype(np.uint8), bitorder="little")
    if hasattr(g, "get"):
        g = await g.get()
    if hasattr(h, "get"):
        h = await h.get()
    if not isinstance(g, Raw) or g.shape != gshape or g.bits != gbits:
        raise ValueError(f"ltz_mul_lin: g must be a Raw share of shape {gshape} with {gbits} pending bits")
    if h.shape != gshape:
        raise ValueError(f"ltz_mul_lin: h has shape {h.shape}, not {gshape}")
    cg = flat(_raw_open(rt, g, m["rg"]))
    eh = flat(h - m["ah"])
    theirs, cg2, eh2 = await rt.exchange(packed, cg, eh)
    a_ = np.array(alpha, dtype=np.int64).view(np.uint64)
    b_ = np.array(beta, dtype=np.int64).view(np.uint64)
    out, prod = ring.ltz_lin_finish(
        mine, theirs, cg + cg2, gbits, flat(m["mg"]), flat(m["Rg"]), flat(h), eh + eh2,
        flat(m["sa"]), flat(m["smg"]), flat(m["sRg"]), flat(m["sah"]), a_, b_, rt.party,
    )  # fmt: skip
    return out.reshape(x.shape), prod.reshape(x.shape)


async def lt(rt, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[x < y] as fixed-point 0/1 shares. Cost of :func:`ltz` (8 rounds)."""
    return (await ltz(rt, x - y)) * np.uint64(rt.fx.scale)


async def relu(rt, x: np.ndarray) -> np.ndarray:
    """max(x, 0) = x - [x < 0] x, the product fused into the comparison. 8 rounds; 39.75 B/element."""
    _, neg_part = await ltz_mul(rt, x, x)
    return x - neg_part


async def argmax(rt, x: np.ndarray) -> np.ndarray:
    """Index of the largest entry along the last axis, as a fixed-point share (ties: lowest index).

    A tournament: each level compares neighbours, b = [a < b'] (:func:`ltz`), and keeps
    a + b (b' - a) and its index ia + b (ib - ia) (one Beaver product of the bit, exact: the bit
    has integer scale). Only the index is meant to be revealed; the values stay shared.
    Rounds: 9 per level, ceil(log2 n) levels. Bytes per element: about 31.75 + 16 (halving per level).
    """
    n = x.shape[-1]
    lead = x.shape[:-1]
    idx = add_public(
        rt,
        np.zeros(x.shape, np.uint64),
        np.broadcast_to((np.arange(n, dtype=np.int64) << rt.fx.frac_bits).view(np.uint64), x.shape),
    )
    vals = x
    while vals.shape[-1] > 1:
        m = vals.shape[-1] // 2
        a, b = vals[..., 0 : 2 * m : 2], vals[..., 1 : 2 * m : 2]
        ia, ib = idx[..., 0 : 2 * m : 2], idx[..., 1 : 2 * m : 2]
        bit = await ltz(rt, a - b)  # [a < b]
        sel = await mul(rt, np.stack([bit, bit]), np.stack([b - a, ib - ia]), trunc=False)
        new_v, new_i = a + sel[0], ia + sel[1]
        if vals.shape[-1] % 2:  # the odd one out goes up unchanged
            new_v = np.concatenate([new_v, vals[..., -1:]], axis=-1)
            new_i = np.concatenate([new_i, idx[..., -1:]], axis=-1)
        vals, idx = new_v, new_i
    return idx.reshape(lead)
