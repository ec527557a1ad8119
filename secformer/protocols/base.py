"""Base protocols over additive shares in Z_2^64 (two parties + dealer).

Conventions: shares are uint64 arrays; fixed-point values carry f fractional bits
(``rt.fx.frac_bits``). "Rounds" are communication rounds between P0 and P1; "bytes" are payload
bytes each party sends per element (frame headers excluded). Dealer bytes are what the dealer
sends to P1 per element (P0's share comes from a seed).
"""

from __future__ import annotations

import numpy as np

from secformer import ring
from secformer.material import LOW63, ltz_level_offsets

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


def truncate(rt, x: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Divide by 2^bits (default f) locally. 0 rounds. Error <= 1 ulp except w.p. |x|/2^63."""
    return ring.truncate_share(x, rt.fx.frac_bits if bits is None else bits, rt.party)


def mul_const(rt, x: np.ndarray, c) -> np.ndarray:
    """x * c for a public real c (scalar or broadcastable array), 0 rounds.

    c is encoded with e extra fractional bits so that max|c| 2^e lies in [1/2, 1): a small
    constant (1/768, say) keeps its full 16-bit relative precision instead of 0.4% error, and
    the product has the magnitude of x times a value below 1 (same truncation risk).
    Error: 1 ulp + |x| 2^-(f+e+1).
    """
    c = np.asarray(c, dtype=np.float64)
    top = float(np.max(np.abs(c))) if c.size else 0.0
    e = 0
    if 0 < top < 0.5:
        e = min(30, int(np.floor(-np.log2(top))) - 1)
    enc = np.rint(c * float(1 << (rt.fx.frac_bits + e))).astype(np.int64).view(np.uint64)
    return truncate(rt, x * enc, rt.fx.frac_bits + e)


# ------------------------------------------------------------------------------ Beaver products


async def mul(rt, x: np.ndarray, y: np.ndarray, trunc: bool = True) -> np.ndarray:
    """Elementwise product of two shared tensors (Beaver), numpy broadcasting.

    1 round; 8 B per element of each operand (so a per-row factor costs per row only);
    dealer 8 B per output element. With ``trunc`` the result is rescaled by 2^-f.
    """
    if x.shape == y.shape:
        t = await rt.material("mul", shape=list(x.shape))
    else:
        t = await rt.material("mul", shape=list(x.shape), shape_b=list(y.shape))
    e, f = await open_many(rt, x - t["a"], y - t["b"])
    z = t["c"] + e * t["b"] + t["a"] * f
    if _is0(rt):
        z += e * f
    return truncate(rt, z) if trunc else z


async def square(rt, x: np.ndarray, trunc: bool = True) -> np.ndarray:
    """x^2 elementwise (Beaver square pair). 1 round, 8 B/element; dealer 8 B."""
    t = await rt.material("square", shape=list(x.shape))
    e = await open_(rt, x - t["a"])
    z = t["c"] + np.uint64(2) * e * t["a"]
    if _is0(rt):
        z += e * e
    return truncate(rt, z) if trunc else z


async def matmul(rt, x: np.ndarray, y: np.ndarray, trunc: bool = True) -> np.ndarray:
    """Shared x (..., m, k) @ shared y (..., k, n) (Beaver matrix triple).

    1 round; 8(mk + kn) B per party; dealer 8 mn B. Local cost: two ring matmuls.
    """
    t = await rt.material("matmul", shape_a=list(x.shape), shape_b=list(y.shape))
    e, f = await open_many(rt, x - t["a"], y - t["b"])
    rhs = t["b"] + f if _is0(rt) else t["b"]
    z = t["c"] + ring.matmul(e, rhs) + ring.matmul(t["a"], f)
    return truncate(rt, z) if trunc else z


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


async def ltz_mul(rt, x: np.ndarray, y) -> tuple[np.ndarray, np.ndarray | None]:
    """([x < 0], [x < 0] * y): a comparison whose bit multiplies y in its last round.

    ``y`` (same shape as x, any fixed-point scale, or an awaitable of it) is needed only in
    the last round, so it may still be computing while the comparison tree runs. The product
    is exact (no truncation): with t = b ^ s opened and e = y - m opened in the same round,
    b y = t y + (1 - 2t)(e s + s m), where the dealer supplies s (both sharings), m and s m.

    Rounds: 8, as :func:`ltz`. Bytes: 31.75 + 8 per element. Dealer: 32 + 8 per element.
    """
    shape = x.shape
    with_mul = y is not None
    m = await rt.material("ltz", shape=list(shape), mul=int(with_mul))
    p0 = _is0(rt)
    flat = lambda a: np.ascontiguousarray(a).ravel()  # noqa: E731
    n = x.size
    c = flat(await open_(rt, x + m["r"]))
    R = flat(m["rbits"])
    notc = ~c
    G = notc & R & LOW63
    P = ((notc ^ R) if p0 else R) & LOW63
    if p0:
        P |= np.uint64(1 << 63)  # neutral top leaf: g = 0, p = 1
    ta, tb1, tb2 = flat(m["ta"]), flat(m["tb1"]), flat(m["tb2"])
    tc1, tc2 = flat(m["tc1"]), flat(m["tc2"])
    for off, pairs in ltz_level_offsets():
        Gh, e, f1, f2 = ring.ltz_level_send(G, P, ta, tb1, tb2, off, pairs)
        (got,) = await rt.exchange(_pack([e, f1, f2], pairs))
        e2, f12, f22 = _unpack(got, n, pairs, 3)
        G, P = ring.ltz_level_recv(Gh, e, f1, f2, e2, f12, f22, ta, tb1, tb2, tc1, tc2, off, pairs, rt.party)
    bit = (G ^ (R >> np.uint64(63))) & _ONE
    if p0:
        bit ^= c >> np.uint64(63)
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
