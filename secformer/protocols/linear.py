"""Linear layers with the model owner's (P0's) weights, which P0 holds in plaintext.

At load, a weight W is masked with a fixed dealer mask B and F = W - B is opened once (P1 keeps
F; B stays with the dealer; P0 keeps W itself). Each query then multiplies its activations x
(shared, x = x0 + x1) with a fresh mask A that P1 draws whole from its dealer seed, unknown to P0:

    P1 -> P0: D = x1 - A            (uniform: P0 learns nothing about x1)
    x W = (x0 + D) W + A F + A B    P0: (x0 + D) W;  P1: A F;  dealer: shares of C = A B

so a linear layer costs one one-way message, one ring matmul per party (P0's against a
one-limb W: 3 BLAS calls instead of 6) and one at the dealer, instead of a two-way opening and
two full ring matmuls per party. Reusing B with a fresh A per query is standard for fixed
operands: F is opened once, D is uniform every time. P1's A F depends on no input, so P1 also
sends its part of the output's truncation ahead, and P0 answers with one bit per element
(:func:`matmul_owner`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secformer import ring
from secformer.errors import ProtocolError
from secformer.material import MatmulO, Trunc, WMask
from secformer.protocols.base import open_, truncate_finish
from secformer.runtime import next_key

_TWO62 = np.uint64(1 << 62)


@dataclass
class PreparedWeight:
    """A weight after its one-off masking: what this party needs for every query.

    P0 keeps its plaintext weight W (encoded, pre-split: 8 B per element when |W| < 32);
    P1 keeps F = W - B pre-split with its limb sum (32 B per element, ``store="karatsuba"``),
    pre-split (24 B, ``store="limbs"``) or as uint64 (8 B, ``store="ring"``, split per use)."""

    key: str
    shape: tuple[int, int]
    w: ring.Limbs | None  # P0: the encoded weight
    f: ring.Limbs | np.ndarray | None  # P1: F = W - B (public to both; P0 does not keep it)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in (self.w, self.f) if v is not None)


# bytes per weight element that P1 keeps for F, best first: its limbs and Karatsuba's limb sum,
# its limbs, or the ring element (split per use)
STORES = {"karatsuba": 32, "limbs": 24, "ring": 8}


async def prepare_weight(
    rt, w: np.ndarray, store: str = "karatsuba", plain: np.ndarray | ring.Limbs | None = None
) -> PreparedWeight:
    """Mask a 2-D weight share once and open F = W - B. 1 round, 8 B per weight element per party;
    dealer: 0 B (the mask is seeded for both parties; the dealer prepares its copy of B).
    P0 passes ``plain``, its encoded weight (or its limbs from an earlier session), which it
    keeps instead of F."""
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {w.shape}")
    if store not in STORES:
        raise ValueError(f"store must be one of {sorted(STORES)}")
    key = next_key()
    b = (await rt.provider.get(key, "wmask", WMask(w.shape).wire()))["b"]
    f = await open_(rt, w - b)
    if rt.party == 0:
        if plain is None or plain.shape != w.shape:
            raise ProtocolError("P0 must keep its plaintext weight for the linear layers")
        return PreparedWeight(key, w.shape, plain if isinstance(plain, ring.Limbs) else ring.Limbs(plain), None)
    if store == "ring":
        return PreparedWeight(key, w.shape, None, f)
    limbs = ring.Limbs(f)
    return PreparedWeight(key, w.shape, None, limbs.keep_sum() if store == "karatsuba" else limbs)


async def matmul_owner(rt, x: np.ndarray, pw: PreparedWeight, extra: int = 0) -> np.ndarray:
    """x (..., k) @ W (k, n) with the model owner's weight (see the module doc), truncated.

    P1's share of the product, z1 = A F + C1, depends on no input, so P1 also sends its part of
    the truncation's opening, z1 + r1 (uniform to P0), right behind D. P0 then holds the whole
    opened c = z + 2^62 + r (uniform) and needs nothing more; P1 needs only msb(c), one bit per
    output element (:func:`secformer.protocols.base.truncate`: P1's share is W msb(r)_1 - R_1 with
    W = (1 - msb(c)) 2^(64-d)). ``extra``: x carries that many more fractional bits than f (e.g.
    1 for a doubled GeLU, :func:`secformer.protocols.secformer.gelu_secformer`); the truncation
    removes them too, at no cost.
    Rounds: 2 one-way messages (P1 -> P0: D, then z1 + r1 as soon as A F is ready; P0 -> P1:
    msb(c)). Bytes: P1 8 per element of x and 8 per output element; P0 1/8 per output element.
    With the material prefetched, z1 + r1 travels in the offline phase instead
    (:func:`send_truncation_parts`): online, P1 sends 8 B per element of x only.
    Dealer: 8 (C) + 16 (truncation) per output element. Local: one ring matmul per party, one at
    the dealer.
    """
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out_shape = (x2.shape[0], pw.shape[1])
    bits = rt.fx.frac_bits + extra
    t = await rt.material(MatmulO(x2.shape, pw.shape, pw.key))
    tr = await rt.material(Trunc(out_shape, bits))
    n = out_shape[0] * out_shape[1]
    ahead = t.get("t1")  # P1's truncation part, sent in the offline phase (send_truncation_parts)
    if rt.party == 1:
        await rt.transfer(1, [x2 - t["a"]])
        if ahead is None:
            af = t.get("af")  # computed in the offline phase (precompute_owner), else now
            z = (ring.matmul(t["a"], pw.f) if af is None else af) + t["c"]
            await rt.transfer(1, [z + tr["r"]], tick=False)
        (packed,) = await rt.transfer(0, None)
        if packed.dtype != np.uint8 or packed.shape != ((n + 7) // 8,):
            raise ProtocolError(f"P0 sent {packed.shape} {packed.dtype} as the truncation's top bits, not {n} bits")
        top = np.unpackbits(packed, count=n, bitorder="little").astype(np.uint64).reshape(out_shape)
        out = ((np.uint64(1) - top) << np.uint64(64 - bits)) * tr["msb"] - tr["rhi"]
    else:
        (d,) = await rt.transfer(1, None)
        if d.shape != x2.shape or d.dtype != np.uint64:
            raise ProtocolError(f"P1 sent a masked activation of shape {d.shape} {d.dtype}, expected {x2.shape}")
        z = ring.matmul(x2 + d, pw.w) + t["c"]
        (t1,) = [ahead] if ahead is not None else await rt.transfer(1, None, tick=False)
        if t1.shape != out_shape or t1.dtype != np.uint64:
            raise ProtocolError(f"P1 sent its truncation part of shape {t1.shape} {t1.dtype}, expected {out_shape}")
        c = z + _TWO62 + tr["r"] + t1
        await rt.transfer(0, [np.packbits((c >> np.uint64(63)).astype(np.uint8).ravel(), bitorder="little")])
        out = truncate_finish(0, c, tr["rhi"], tr["msb"], bits)
    return out.reshape(*lead, pw.shape[1])


def precompute_owner(provider, weights: dict[str, PreparedWeight]) -> int:
    """Offline phase, P1: compute A F for every prefetched ``matmul_o`` request whose weight is
    loaded, so the query's linear layers cost P1 no matmul online (A is P1's seeded mask, F the
    opened masked weight: neither depends on the query's input). Returns how many were computed."""
    if provider.party != 1:
        return 0
    n = 0
    for _, spec, fields in provider.drawn("matmul_o"):
        pw = weights.get(spec["wkey"])
        if pw is None or "af" in fields or pw.f is None:
            continue
        if tuple(spec["shape_b"]) != pw.shape:
            raise ProtocolError(f"prefetched matmul_o for weight {pw.key} has shape {spec['shape_b']}, not {pw.shape}")
        fields["af"] = ring.matmul(fields["a"], pw.f)
        n += 1
    return n


CHUNK = 1 << 27  # bytes of truncation parts per message of the offline phase (frames stay small)


def _next_key(key: str) -> str:
    """The program-counter key that follows ``key`` in the same task (``prefix`` + n + 1)."""
    head = key.rstrip("0123456789")
    return f"{head}{int(key[len(head) :]) + 1}"


async def send_truncation_parts(rt) -> int:
    """Offline phase, both parties: P1 sends its part z1 + r1 = A F + C1 + r1 of the truncation of
    every owner linear layer (:func:`matmul_owner`; after :func:`precompute_owner`) whose material
    both parties hold ahead; the part depends on no input. Online P1 then sends only D, and P0
    answers msb(c).

    P0 first names the layers it holds ahead, and accepts parts for those only, each checked against
    the layer's output shape, each once: what P1 can make P0 store is bounded by the material P0
    chose to keep within its own memory budget. A layer that P0 did not name keeps its on-demand
    path online. Messages of at most 128 MB; returns the bytes of parts sent (P1) or received (P0).
    Rounds: 2 + one per extra 128 MB, offline."""
    prov = rt.provider
    if rt.party == 1:
        (named,) = await rt.transfer(0, None)
        p0_has = set(_keys(named, "P0 sent a malformed list of layers held ahead"))
        keys, arrays = [], []
        for key, spec, fields in prov.drawn("matmul_o"):
            tr = prov.ahead(_next_key(key))
            mm = prov.ahead(key)
            if key not in p0_has or "af" not in fields or "t1" in fields or tr is None or mm is None:
                continue
            out_shape = (spec["shape_a"][0], spec["shape_b"][1])
            if tr[0] != "trunc" or tuple(tr[1]["shape"]) != out_shape:
                continue
            fields["t1"] = fields["af"] + mm[2]["c"] + tr[2]["r"]
            keys.append(key)
            arrays.append(fields["t1"])
        sent, start = 0, 0
        while True:  # chunks of at most CHUNK bytes; the first says how many follow
            end, size = start, 0
            while end < len(arrays) and (end == start or size + arrays[end].nbytes <= CHUNK):
                size += arrays[end].nbytes
                end += 1
            more = np.array([int(end < len(arrays))], dtype=np.int64)
            await rt.transfer(1, [more, _names(keys[start:end]), *arrays[start:end]])
            sent += size
            if end >= len(arrays):
                return sent
            start = end
    wanted = {key: spec for key, spec, _ in prov.drawn("matmul_o")}
    await rt.transfer(0, [_names(list(wanted))])
    got = 0
    while True:
        msg = await rt.transfer(1, None)
        if len(msg) < 2 or msg[0].shape != (1,):
            raise ProtocolError("P1 sent a malformed batch of truncation parts")
        keys = _keys(msg[1], "P1 sent a malformed batch of truncation parts")
        if len(keys) != len(msg) - 2:
            raise ProtocolError(f"P1 sent {len(msg) - 2} truncation parts for {len(keys)} layers")
        for key, part in zip(keys, msg[2:], strict=True):
            spec = wanted.pop(key, None)
            if spec is None:
                raise ProtocolError(f"P1 sent a truncation part for {key!r}, which P0 did not name (or got twice)")
            out_shape = (spec["shape_a"][0], spec["shape_b"][1])
            if part.shape != out_shape or part.dtype != np.uint64:
                raise ProtocolError(f"P1's truncation part for {key} is {part.shape} {part.dtype}, not {out_shape}")
            prov.attach(key, "t1", part)
            got += part.nbytes
        if not int(msg[0][0]):
            return got


def _names(keys: list[str]) -> np.ndarray:
    """Request keys as one message array (UTF-8 bytes, newline-separated)."""
    return np.frombuffer("\n".join(keys).encode(), dtype=np.uint8)


def _keys(arr: np.ndarray, what: str) -> list[str]:
    """The request keys of a :func:`_names` array; ProtocolError(``what``) if it is not one."""
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ProtocolError(what)
    try:
        return bytes(arr).decode().split("\n") if arr.size else []
    except UnicodeDecodeError:
        raise ProtocolError(what) from None
