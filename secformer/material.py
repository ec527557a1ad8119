"""Correlated randomness: what the dealer hands out, and which part travels.

Each kind of material is a set of named uint64 fields. A field is drawn from a PRG stream
(P0's whole share comes from the key P0 shares with the dealer; P1's purely random fields
come from the key P1 shares with the dealer) or, for P1, is a *correction* computed by the
dealer so that the two shares satisfy the correlation. Only corrections travel, so e.g. a
Beaver triple costs the dealer one ring element per element of c (CrypTen TTP-style).

The same code runs in the dealer (both shares) and in each party (its own seeded part), so
their views cannot drift apart. Stream ids come from the request key (the program counter of
the protocol step), so every request of a session draws fresh randomness.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from secformer import ring
from secformer.errors import ProtocolError
from secformer.prg import PRG

Shape = tuple[int, ...]
Fields = dict[str, np.ndarray]
LOW63 = np.uint64((1 << 63) - 1)
ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class Field:
    name: str
    shape: Shape
    p1_from_dealer: bool = False  # True: P1's share is a dealer correction
    mask: np.uint64 = ALL  # bit fields keep only these bits
    p1_only: bool = False  # True: a value P1 holds whole (from its seed; the dealer knows it, P0 not)

    @property
    def wire_dtype(self) -> np.dtype:
        """The narrowest unsigned type that holds the field's bits: a correction travels as it
        (e.g. msb(r) mod 2^bits in 4 bytes instead of 8)."""
        for dt in (np.uint8, np.uint16, np.uint32):
            if int(self.mask) < 1 << (8 * np.dtype(dt).itemsize):
                return np.dtype(dt)
        return np.dtype(np.uint64)

    @property
    def wire_bytes(self) -> int:
        return self.wire_dtype.itemsize * math.prod(self.shape)


@dataclass(frozen=True)
class Kind:
    """A kind of material: its fields for a spec, and the dealer's corrections for P1.

    ``correct(spec, s0, s1, ctx)``: ``ctx`` is the dealer's :class:`DealerContext` (for kinds
    that depend on earlier material, e.g. a weight's fixed mask)."""

    fields: Callable[[dict[str, Any]], list[Field]]
    correct: Callable[..., Fields]
    notify_dealer: bool = False  # sent to the dealer even without corrections (it prepares state)


# bytes of pre-split weights (P1's F) and weight masks (the dealer's B) a session keeps by default:
# BERT-base's 109 M weight elements at 32 B (three float64 limbs and the sum of the first two)
PRESPLIT_MEMORY = 4e9


@dataclass
class DealerContext:
    """What the dealer keeps across requests of one session."""

    prg0: PRG
    prg1: PRG
    weight_masks: dict[str, Any]
    budget: float = PRESPLIT_MEMORY  # bytes of pre-split masks kept (24 B per element, 32 with the limb sum)

    def weight_mask(self, key: str, shape: Shape) -> Any:
        """The full mask B of the weight prepared under ``key``, as :class:`ring.Limbs` (kept
        while the budget lasts, so every query's C = A B skips regenerating and splitting B)."""
        b = self.weight_masks.get(key)
        if b is None:
            f = _wmask_fields({"shape": list(shape)})
            b = ring.Limbs(draw(self.prg0, key, f, 0)["b"] + draw(self.prg1, key, f, 1)["b"])
            cost = 24 * int(np.prod(shape))
            if cost <= self.budget:
                self.budget -= cost
                self.weight_masks[key] = b
                if b.uses_sum and 8 * int(np.prod(shape)) <= self.budget:
                    self.budget -= 8 * int(np.prod(shape))
                    b.keep_sum()
        if b.shape != tuple(shape):
            raise ProtocolError(f"weight {key!r} has shape {b.shape}, request says {tuple(shape)}")
        return b


KINDS: dict[str, Kind] = {}


# ---------------------------------------------------------------------------- typed requests

MAX_DIMS = 8


SHAPE = {"t": "shape"}  # parameter metadata: a shape (tuple of non-negative ints)
TEXT = {"t": "str"}


def _ints(lo: int, hi: int, allowed: tuple[int, ...] = ()) -> dict[str, Any]:
    """Parameter metadata: an int in [lo, hi] (or one of ``allowed``)."""
    return {"t": "int", "lo": lo, "hi": hi, "allowed": allowed}


@dataclass(frozen=True)
class Spec:
    """A typed request for material: one subclass per kind, its parameters as fields.

    Checked when made (a protocol's request) and when parsed from the wire (the dealer's side,
    :func:`parse_spec`): unknown or missing parameters, wrong types and out-of-range values raise
    :class:`ProtocolError` naming them. On the wire and in plan files a spec is the dict of
    :meth:`wire`; field functions read it by name (``spec["bits"]``, ``spec.get("mul", 0)``), so
    they take either form."""

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.default is None:
                continue
            t = f.metadata.get("t")
            where = f"material {self.kind!r}: parameter {f.name!r}"
            if t == "shape":
                if not isinstance(v, list | tuple) or not all(
                    isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in v
                ):
                    raise ProtocolError(f"{where} must be a shape (non-negative ints), got {v!r}")
                if len(v) > MAX_DIMS or math.prod(v) > 1 << 31:
                    raise ProtocolError(f"{where}: shape {tuple(v)} is too large")
                object.__setattr__(self, f.name, tuple(int(d) for d in v))
            elif t == "int":
                if not isinstance(v, int | np.integer) or isinstance(v, bool):
                    raise ProtocolError(f"{where} must be an int, got {v!r}")
                m = f.metadata
                if not (int(v) in m["allowed"] if m["allowed"] else m["lo"] <= v <= m["hi"]):
                    rng = m["allowed"] or f"[{m['lo']}, {m['hi']}]"
                    raise ProtocolError(f"{where} must be in {rng}, got {v!r}")
                object.__setattr__(self, f.name, int(v))
            elif t == "str" and (not isinstance(v, str) or len(v) > 400):
                raise ProtocolError(f"{where} must be a string, got {type(v).__name__}")

    def wire(self) -> dict[str, Any]:
        """The spec as it travels (msgpack) and is stored in plans: shapes as lists, no Nones."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    # read by name, as field functions do with wire dicts
    def __getitem__(self, name: str) -> Any:
        v = getattr(self, name, None) if name in self._names() else None
        if v is None:
            raise KeyError(name)
        return list(v) if isinstance(v, tuple) else v

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    @classmethod
    def _names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))


SPECS: dict[str, type[Spec]] = {}


def _spec(cls: type[Spec]) -> type[Spec]:
    SPECS[cls.kind] = cls
    return cls


def parse_spec(kind_name: str, d: Any) -> Spec:
    """A request from the wire as its typed spec; raises ProtocolError naming what is wrong."""
    cls = SPECS.get(kind_name) if isinstance(kind_name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown material kind {kind_name!r}; known: {sorted(SPECS)}")
    if isinstance(d, Spec):
        d = d.wire()
    if not isinstance(d, dict) or not all(isinstance(k, str) for k in d):
        raise ProtocolError(f"material {kind_name!r}: the spec must be a map of parameters, got {type(d).__name__}")
    unknown = sorted(set(d) - cls._names())
    if unknown:
        raise ProtocolError(f"material {kind_name!r} has no parameter(s) {unknown}; it takes {sorted(cls._names())}")
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in d
    )
    if missing:
        raise ProtocolError(f"material {kind_name!r} is missing parameter(s) {missing}")
    return cls(**d)


@_spec
@dataclass(frozen=True)
class Mul(Spec):
    """Beaver triple for x * y (y broadcast to ``shape_b`` if given)."""

    kind: ClassVar[str] = "mul"
    shape: Shape = field(metadata=SHAPE)
    shape_b: Shape | None = field(default=None, metadata=SHAPE)


@_spec
@dataclass(frozen=True)
class Square(Spec):
    kind: ClassVar[str] = "square"
    shape: Shape = field(metadata=SHAPE)


@_spec
@dataclass(frozen=True)
class Matmul(Spec):
    kind: ClassVar[str] = "matmul"
    shape_a: Shape = field(metadata=SHAPE)
    shape_b: Shape = field(metadata=SHAPE)


@_spec
@dataclass(frozen=True)
class Trunc(Spec):
    """Truncation by ``bits`` (r, r >> bits, msb(r))."""

    kind: ClassVar[str] = "trunc"
    shape: Shape = field(metadata=SHAPE)
    bits: int = field(metadata=_ints(1, 60))


@_spec
@dataclass(frozen=True)
class MulR(Spec):
    """Product whose operands may be raw shares still to be truncated by ``bits_a``/``bits_b``."""

    kind: ClassVar[str] = "mulr"
    shape: Shape = field(metadata=SHAPE)
    shape_b: Shape | None = field(default=None, metadata=SHAPE)
    bits_a: int = field(default=0, metadata=_ints(0, 60))
    bits_b: int = field(default=0, metadata=_ints(0, 60))


@_spec
@dataclass(frozen=True)
class SquareR(Spec):
    kind: ClassVar[str] = "squarer"
    shape: Shape = field(metadata=SHAPE)
    bits: int = field(default=0, metadata=_ints(0, 60))


@_spec
@dataclass(frozen=True)
class Ltz(Spec):
    """Comparison x < 0 on the low ``bits`` bits, optionally fused with a product (``mul``);
    ``drop`` low bits left out of a coarse comparison (protocols.base.ltz_mul)."""

    kind: ClassVar[str] = "ltz"
    shape: Shape = field(metadata=SHAPE)
    mul: int = field(default=0, metadata=_ints(0, 1))
    bits: int = field(default=63, metadata=_ints(0, 63, (63, 31)))
    drop: int = field(default=0, metadata=_ints(0, 15, (0, 15)))
    fan: int = field(default=2, metadata=_ints(2, 4, (2, 4)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.drop and self.bits != 31:
            raise ProtocolError(f"material 'ltz': drop={self.drop} needs bits=31, got bits={self.bits}")


@_spec
@dataclass(frozen=True)
class PowMulR(Spec):
    """A raw x (``bits_a`` still to be truncated) opened once for x, x^2, x^3 and x y, with y raw
    (``bits_b``) or ordinary (0), both of ``shape`` (protocols.base.powers_mul)."""

    kind: ClassVar[str] = "powmulr"
    shape: Shape = field(metadata=SHAPE)
    bits_a: int = field(metadata=_ints(1, 60))
    bits_b: int = field(default=0, metadata=_ints(0, 60))


@_spec
@dataclass(frozen=True)
class SquareMulR(Spec):
    """A raw x (``bits`` still to be truncated) opened once for x^2 and x y, y of ``shape_b``
    broadcast to x's ``shape`` (protocols.base.square_mul)."""

    kind: ClassVar[str] = "squaremulr"
    shape: Shape = field(metadata=SHAPE)
    shape_b: Shape = field(metadata=SHAPE)
    bits: int = field(metadata=_ints(1, 60))


@_spec
@dataclass(frozen=True)
class LtzLin(Spec):
    """``blocks`` comparisons of ``shape`` each, every bit times alpha_j g + beta_j h, where g is a
    raw share still to be truncated by ``gbits`` and h an ordinary share, both of ``shape`` and
    opened once for all blocks (protocols.base.ltz_mul_lin)."""

    kind: ClassVar[str] = "ltz_lin"
    shape: Shape = field(metadata=SHAPE)
    blocks: int = field(metadata=_ints(1, 8))
    gbits: int = field(metadata=_ints(1, 60))
    bits: int = field(default=31, metadata=_ints(0, 63, (63, 31)))
    drop: int = field(default=0, metadata=_ints(0, 15, (0, 15)))


@_spec
@dataclass(frozen=True)
class Trig(Spec):
    """Fourier masks: sin/cos of j t for j = 1..k, t mod 2^bits, precision f."""

    kind: ClassVar[str] = "trig"
    shape: Shape = field(metadata=SHAPE)
    k: int = field(metadata=_ints(1, 64))
    bits: int = field(metadata=_ints(1, 62))
    f: int = field(metadata=_ints(0, 30))


@_spec
@dataclass(frozen=True)
class WMask(Spec):
    """The fixed mask B of one weight matrix (``key``: set by the dealer to the request's key)."""

    kind: ClassVar[str] = "wmask"
    shape: Shape = field(metadata=SHAPE)
    key: str | None = field(default=None, metadata=TEXT)


@_spec
@dataclass(frozen=True)
class MatmulO(Spec):
    """x W with the owner's weight ``wkey`` (masked once by :class:`WMask`)."""

    kind: ClassVar[str] = "matmul_o"
    shape_a: Shape = field(metadata=SHAPE)
    shape_b: Shape = field(metadata=SHAPE)
    wkey: str = field(metadata=TEXT)


def stream_id(key: str) -> int:
    """64-bit PRG stream id of a request key."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _shape(spec: dict[str, Any], name: str = "shape") -> Shape:
    s = spec.get(name)
    if not isinstance(s, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in s):
        raise ProtocolError(f"material spec field {name!r} must be a shape, got {s!r}")
    if math.prod(s) > 1 << 31:
        raise ProtocolError(f"material shape {tuple(s)} is too large")
    return tuple(s)


def kind(name: str) -> Callable[[Kind], Kind]:
    def register(k: Kind) -> Kind:
        KINDS[name] = k
        return k

    return register


def draw(prg: PRG, key: str, fields: list[Field], party: int) -> Fields:
    """A party's seeded fields (P0: all; P1: those not corrected by the dealer).

    All of them come from one keystream of the request's stream, cut in field order: one AES
    set-up per request instead of one per field (a set-up costs about 0.15 ms in Python, and a
    BERT-base query makes over 5,000 field draws at the dealer)."""
    mine = [f for f in fields if not ((party == 1 and f.p1_from_dealer) or (party == 0 and f.p1_only))]
    sizes = [math.prod(f.shape) for f in mine]
    flat = prg.uint64(stream_id(key), 0, sum(sizes))
    out: Fields = {}
    off = 0
    for f, n in zip(mine, sizes, strict=True):
        v = flat[off : off + n].reshape(f.shape)
        off += n
        if f.mask != ALL:
            v &= f.mask
        out[f.name] = v
    return out


def get_kind(name: str) -> Kind:
    k = KINDS.get(name)
    if k is None:
        raise ProtocolError(f"unknown material kind {name!r}; known: {sorted(KINDS)}")
    return k


def request_bytes(kind_name: str, spec: dict[str, Any]) -> int:
    """Bytes of material (all fields, one share) that a request makes the dealer generate."""
    return sum(8 * math.prod(f.shape) for f in get_kind(kind_name).fields(spec))


def dealer_generate(
    kind_name: str,
    spec: dict[str, Any],
    key: str,
    prg0: PRG,
    prg1: PRG,
    ctx: DealerContext | None = None,
    max_bytes: int | None = None,
) -> Fields:
    """The dealer's job for one request: P1's corrections. Refuses (ProtocolError) a request
    whose material exceeds ``max_bytes`` (e.g. a broadcast product of [2^31, 1] by [1, 2^31])."""
    k = get_kind(kind_name)
    fields = k.fields(spec)
    if max_bytes is not None:
        size = sum(8 * math.prod(f.shape) for f in fields)
        if size > max_bytes:
            raise ProtocolError(
                f"request {key!r} ({kind_name}) asks for {size / 2**20:.0f} MB of material; "
                f"this dealer generates at most {max_bytes / 2**20:.0f} MB per request (max_request_mb)"
            )
    s0 = draw(prg0, key, fields, 0)
    s1 = draw(prg1, key, fields, 1)
    corr = k.correct(spec, s0, s1, ctx or DealerContext(prg0, prg1, {}))
    for f in fields:
        if f.p1_from_dealer:
            v = corr[f.name] & f.mask if f.mask != ALL else corr[f.name]
            corr[f.name] = np.ascontiguousarray(v.astype(f.wire_dtype, copy=False))
    return corr


def correction_fields(kind_name: str, spec: dict[str, Any]) -> list[Field]:
    return [f for f in get_kind(kind_name).fields(spec) if f.p1_from_dealer]


def needs_dealer(kind_name: str, spec: dict[str, Any]) -> bool:
    """Whether P1 sends this request to the dealer (and waits for its answer)."""
    return get_kind(kind_name).notify_dealer or bool(correction_fields(kind_name, spec))


# ---------------------------------------------------------------------------- Beaver triples


def _product_shapes(spec: dict[str, Any]) -> tuple[Shape, Shape, Shape]:
    """Shapes of an elementwise product's operands (``shape``, ``shape_b``) and of its result."""
    s = _shape(spec)
    sb = _shape(spec, "shape_b") if "shape_b" in spec else s
    try:
        return s, sb, np.broadcast_shapes(s, sb)
    except ValueError:
        raise ProtocolError(f"mul triple shapes do not broadcast: {s} * {sb}") from None


def _mul_fields(spec: dict[str, Any]) -> list[Field]:
    s, sb, sc = _product_shapes(spec)
    return [Field("a", s), Field("b", sb), Field("c", sc, p1_from_dealer=True)]


def _mul_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    a = s0["a"] + s1["a"]
    b = s0["b"] + s1["b"]
    return {"c": a * b - s0["c"]}


KINDS["mul"] = Kind(_mul_fields, _mul_correct)


def _square_fields(spec: dict[str, Any]) -> list[Field]:
    s = _shape(spec)
    return [Field("a", s), Field("c", s, p1_from_dealer=True)]


def _square_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    a = s0["a"] + s1["a"]
    return {"c": a * a - s0["c"]}


KINDS["square"] = Kind(_square_fields, _square_correct)


def _matmul_fields(spec: dict[str, Any]) -> list[Field]:
    sa, sb = _shape(spec, "shape_a"), _shape(spec, "shape_b")
    if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
        raise ProtocolError(f"matmul triple shapes do not chain: {sa} @ {sb}")
    sc = (*np.broadcast_shapes(sa[:-2], sb[:-2]), sa[-2], sb[-1])
    return [Field("a", sa), Field("b", sb), Field("c", sc, p1_from_dealer=True)]


def _matmul_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    a = s0["a"] + s1["a"]
    b = s0["b"] + s1["b"]
    return {"c": ring.matmul(a, b) - s0["c"]}


KINDS["matmul"] = Kind(_matmul_fields, _matmul_correct)


# ---------------------------------------------------------------------------- truncation


def _trunc_fields(spec: dict[str, Any]) -> list[Field]:
    s = _shape(spec)
    b = spec.get("bits")
    if not (isinstance(b, int) and 1 <= b <= 60):
        raise ProtocolError(f"trunc spec needs 1 <= bits <= 60, got {b!r}")
    return [
        Field("r", s),  # uniform mask, both shares seeded
        Field("rhi", s, p1_from_dealer=True),  # r >> bits (logical), additively shared
        Field("msb", s, p1_from_dealer=True, mask=np.uint64((1 << b) - 1)),  # msb(r), shared mod 2^bits
    ]


def _trunc_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    r = s0["r"] + s1["r"]
    b = np.uint64(spec["bits"])
    return {"rhi": (r >> b) - s0["rhi"], "msb": (r >> np.uint64(63)) - s0["msb"]}


KINDS["trunc"] = Kind(_trunc_fields, _trunc_correct)


# ------------------------------------------- products whose operands are still to be truncated


def _bits(spec: dict[str, Any], name: str) -> int:
    b = spec.get(name, 0)
    if not (isinstance(b, int) and (b == 0 or 1 <= b <= 60)):
        raise ProtocolError(f"{name} must be 0 (operand truncated) or in [1, 60], got {b!r}")
    return b


def _lowmask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _mulr_fields(spec: dict[str, Any]) -> list[Field]:
    """A Beaver product x * y where x and/or y is a raw share still to be truncated by ``bits_a`` /
    ``bits_b`` bits (0: an ordinary operand). A raw operand is opened with a truncation mask r
    (c = z + 2^62 + r) instead of a Beaver mask; the dealer adds r >> bits, msb(r) and the cross
    products that the truncated operand's decomposition needs (see protocols.base.mul)."""
    s, sb, sc = _product_shapes(spec)
    ba, bb = _bits(spec, "bits_a"), _bits(spec, "bits_b")
    if ba == 0 and bb == 0:
        raise ProtocolError("mulr needs at least one raw operand (use mul)")
    out: list[Field] = []
    for name, shape, b in (("a", s, ba), ("b", sb, bb)):
        if b:
            out += [
                Field(f"r{name}", shape),
                Field(f"R{name}", shape, p1_from_dealer=True),
                Field(f"m{name}", shape, p1_from_dealer=True, mask=_lowmask(b)),
            ]
        else:
            out.append(Field(name, shape))
    if ba and bb:
        out += [
            Field("RaRb", sc, p1_from_dealer=True),
            Field("Ramb", sc, p1_from_dealer=True, mask=_lowmask(bb)),
            Field("maRb", sc, p1_from_dealer=True, mask=_lowmask(ba)),
        ]
    elif ba:
        out += [Field("Rab", sc, p1_from_dealer=True), Field("mab", sc, p1_from_dealer=True, mask=_lowmask(ba))]
    else:
        out += [Field("aRb", sc, p1_from_dealer=True), Field("amb", sc, p1_from_dealer=True, mask=_lowmask(bb))]
    return out


def _raw_parts(s0: Fields, s1: Fields, name: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
    r = s0[f"r{name}"] + s1[f"r{name}"]
    return r >> np.uint64(bits), r >> np.uint64(63)


def _mulr_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    ba, bb = spec.get("bits_a", 0), spec.get("bits_b", 0)
    out: Fields = {}
    if ba:
        Ra, ma = _raw_parts(s0, s1, "a", ba)
        out["Ra"], out["ma"] = Ra - s0["Ra"], ma - s0["ma"]
    else:
        a = s0["a"] + s1["a"]
    if bb:
        Rb, mb = _raw_parts(s0, s1, "b", bb)
        out["Rb"], out["mb"] = Rb - s0["Rb"], mb - s0["mb"]
    else:
        b = s0["b"] + s1["b"]
    if ba and bb:
        out["RaRb"] = Ra * Rb - s0["RaRb"]
        out["Ramb"] = Ra * mb - s0["Ramb"]
        out["maRb"] = ma * Rb - s0["maRb"]
    elif ba:
        out["Rab"], out["mab"] = Ra * b - s0["Rab"], ma * b - s0["mab"]
    else:
        out["aRb"], out["amb"] = a * Rb - s0["aRb"], a * mb - s0["amb"]
    return out


KINDS["mulr"] = Kind(_mulr_fields, _mulr_correct)


def _powmulr_fields(spec: dict[str, Any]) -> list[Field]:
    """:func:`_mulr_fields` for x y, plus R^2, R m, R^3 and R^2 m of x's mask (R = r >> bits_a,
    m = msb(r)) for x^2 and x^3 (the m terms are needed only mod 2^bits_a: W m, W = 2^(64 - bits_a))."""
    if _bits(spec, "bits_a") == 0:
        raise ProtocolError("powmulr needs a raw x")
    s = _shape(spec)
    low = _lowmask(spec["bits_a"])
    return [
        *_mulr_fields(spec),
        Field("Ra2", s, p1_from_dealer=True),
        Field("Ram", s, p1_from_dealer=True, mask=low),
        Field("Ra3", s, p1_from_dealer=True),
        Field("Ra2m", s, p1_from_dealer=True, mask=low),
    ]


def _powmulr_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    out = _mulr_correct(spec, s0, s1)
    R, m = _raw_parts(s0, s1, "a", spec["bits_a"])
    R2 = R * R
    out.update(Ra2=R2 - s0["Ra2"], Ram=R * m - s0["Ram"], Ra3=R2 * R - s0["Ra3"], Ra2m=R2 * m - s0["Ra2m"])
    return out


KINDS["powmulr"] = Kind(_powmulr_fields, _powmulr_correct)


def _squarer_fields(spec: dict[str, Any]) -> list[Field]:
    s = _shape(spec)
    b = _bits(spec, "bits")
    if b == 0:
        raise ProtocolError("squarer needs a raw operand (use square)")
    return [
        Field("r", s),
        Field("R", s, p1_from_dealer=True),
        Field("m", s, p1_from_dealer=True, mask=_lowmask(b)),
        Field("RR", s, p1_from_dealer=True),
        Field("Rm", s, p1_from_dealer=True, mask=_lowmask(b)),
    ]


def _squarer_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    r = s0["r"] + s1["r"]
    R, m = r >> np.uint64(spec["bits"]), r >> np.uint64(63)
    return {"R": R - s0["R"], "m": m - s0["m"], "RR": R * R - s0["RR"], "Rm": R * m - s0["Rm"]}


KINDS["squarer"] = Kind(_squarer_fields, _squarer_correct)


def _squaremulr_fields(spec: dict[str, Any]) -> list[Field]:
    s, sb, sc = _product_shapes(spec)
    if sc != s:
        raise ProtocolError(f"squaremulr: y's shape {sb} must broadcast to x's {s}")
    b = _bits(spec, "bits")
    if b == 0:
        raise ProtocolError("squaremulr needs a raw operand")
    return [
        *_squarer_fields(spec),
        Field("b", sb),  # y's Beaver mask
        Field("Rb", s, p1_from_dealer=True),  # (r >> bits) b and msb(r) b, for x y
        Field("mb", s, p1_from_dealer=True, mask=_lowmask(b)),
    ]


def _squaremulr_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    out = _squarer_correct(spec, s0, s1)
    r = s0["r"] + s1["r"]
    R, m = r >> np.uint64(spec["bits"]), r >> np.uint64(63)
    b = s0["b"] + s1["b"]
    out.update(Rb=R * b - s0["Rb"], mb=m * b - s0["mb"])
    return out


KINDS["squaremulr"] = Kind(_squaremulr_fields, _squaremulr_correct)


# ---------------------------------------------------------------------------- comparison (LTZ)

LTZ_BITS = (63, 31)  # compared low bits: the whole ring, or values known to lie within +-2^31


def ltz_level_offsets(bits: int = 63) -> list[tuple[int, int]]:
    """(bit offset, pairs) of each level of the carry tree over ``bits + 1`` leaves (``bits``
    compared bits and a neutral leaf) inside the ``bits``-bit AND-triple words: 64 leaves take
    6 levels of 32, 16, 8, 4, 2, 1 gates (63 in all); 32 leaves take 5 levels (31 gates)."""
    out, off, pairs = [], 0, (bits + 1) // 2
    while pairs:
        out.append((off, pairs))
        off += pairs
        pairs //= 2
    return out


# Radix-4 carry tree: a node of four children (3 the highest) is G = G3 ^ P3 G2 ^ P3 P2 G1 ^
# P3 P2 P1 G0, P = P3 P2 P1 P0 (the terms are exclusive, so XOR is OR). The seven operands below
# are opened masked once per level; each product of k of them comes from the openings and the
# dealer's XOR-shares of the products of their masks (every subset of two or more).
FAN4_VARS = ("P3", "P2", "P1", "P0", "G2", "G1", "G0")
FAN4_TERMS = (("P3", "G2"), ("P3", "P2", "G1"), ("P3", "P2", "P1", "G0"), ("P3", "P2", "P1", "P0"))
FAN4_MONOMIALS = tuple(
    sorted(
        {tuple(c) for t in FAN4_TERMS for k in range(2, len(t) + 1) for c in itertools.combinations(t, k)},
        key=lambda m: (len(m), m),
    )
)


def fan4_leaves(bits: int, drop: int) -> int:
    """Leaves of the radix-4 tree: the compared bits (and the neutral top leaf unless ``drop``),
    padded with neutral leaves to a power of 4 (64 for 63 or 31 bits, 16 for a coarse comparison)."""
    k = bits - drop + (0 if drop else 1)
    return 16 if k <= 16 else 64


def fan4_groups(bits: int, drop: int) -> list[int]:
    """Groups of four per level, from the leaves up (64 leaves: 16, 4, 1)."""
    out, n = [], fan4_leaves(bits, drop)
    while n > 1:
        n //= 4
        out.append(n)
    return out


def fan4_offsets(bits: int, drop: int) -> list[tuple[int, int]]:
    """(bit offset, groups) of each level inside a radix-4 field: all levels share one word per
    operand mask and per mask product (21 bits for 64 leaves, 5 for 16)."""
    out, off = [], 0
    for n in fan4_groups(bits, drop):
        out.append((off, n))
        off += n
    return out


def fan4_name(mono: tuple[str, ...]) -> str:
    """The field holding one operand's mask (one name) or one product of masks, every level."""
    return "q_" + "".join(mono)


def _ltz_fields(spec: dict[str, Any]) -> list[Field]:
    s = _shape(spec)
    mul = spec.get("mul", 0)
    if mul not in (0, 1):
        raise ProtocolError(f"ltz spec 'mul' must be 0 or 1, got {mul!r}")
    bits = spec.get("bits", 63)
    if bits not in LTZ_BITS:
        raise ProtocolError(f"ltz spec 'bits' must be one of {LTZ_BITS}, got {bits!r}")
    drop = spec.get("drop", 0)
    if drop not in (0, 15) or (drop and bits != 31):
        raise ProtocolError(f"ltz spec 'drop' must be 0, or 15 with bits 31, got {drop!r}")
    fan = spec.get("fan", 2)
    if fan not in (2, 4):
        raise ProtocolError(f"ltz spec 'fan' must be 2 or 4, got {fan!r}")
    k = bits - drop  # compared bits (tree leaves: 64, 32 or 16)
    gates = np.uint64((1 << k) - 1)
    extra = [Field("ma", s), Field("msa", s, p1_from_dealer=True)] if mul else []
    if fan == 2:
        tree = [
            Field("ta", s, mask=gates),  # AND triples: one bit per tree gate
            Field("tb1", s, mask=gates),
            Field("tb2", s, mask=gates),
            Field("tc1", s, p1_from_dealer=True, mask=gates),
            Field("tc2", s, p1_from_dealer=True, mask=gates),
        ]
    else:
        low = _lowmask(sum(fan4_groups(bits, drop)))  # every level's groups, one bit each
        tree = [Field(fan4_name((v,)), s, mask=low) for v in FAN4_VARS]  # the operands' masks
        tree += [Field(fan4_name(m), s, p1_from_dealer=True, mask=low) for m in FAN4_MONOMIALS]
    return [
        *extra,
        Field("r", s),  # arithmetic mask, both shares seeded
        # bits drop .. drop + k of r (the compared ones and the top one), XOR-shared
        Field("rbits", s, p1_from_dealer=True, mask=ALL if k == 63 else np.uint64((2 << k) - 1)),
        *tree,
        Field("sb", s, mask=np.uint64(1)),  # random bit, XOR-shared ...
        Field("sa", s, p1_from_dealer=True),  # ... and the same bit additively shared
    ]


def _ltz_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    r = s0["r"] + s1["r"]
    s = s0["sb"] ^ s1["sb"]
    drop = np.uint64(spec.get("drop", 0))
    out = {"rbits": (r >> drop) ^ s0["rbits"], "sa": s - s0["sa"]}
    if spec.get("fan", 2) == 2:
        a = s0["ta"] ^ s1["ta"]
        out["tc1"] = (a & (s0["tb1"] ^ s1["tb1"])) ^ s0["tc1"]
        out["tc2"] = (a & (s0["tb2"] ^ s1["tb2"])) ^ s0["tc2"]
    else:
        a = {v: s0[fan4_name((v,))] ^ s1[fan4_name((v,))] for v in FAN4_VARS}
        for m in FAN4_MONOMIALS:
            prod = a[m[0]]
            for v in m[1:]:
                prod = prod & a[v]
            out[fan4_name(m)] = prod ^ s0[fan4_name(m)]
    if "ma" in s0:  # fused product: shares of s * ma for the multiplicand's mask ma
        out["msa"] = s * (s0["ma"] + s1["ma"]) - s0["msa"]
    return out


KINDS["ltz"] = Kind(_ltz_fields, _ltz_correct)


def _ltz_lin_fields(spec: dict[str, Any]) -> list[Field]:
    s = _shape(spec)
    J, gb = spec.get("blocks"), _bits(spec, "gbits")
    if not (isinstance(J, int) and 1 <= J <= 8) or gb == 0:
        raise ProtocolError(f"ltz_lin needs 1 <= blocks <= 8 and 1 <= gbits <= 60, got {spec}")
    sj = (J, *s)
    comparison = _ltz_fields({"shape": list(sj), "bits": spec.get("bits", 31), "drop": spec.get("drop", 0)})
    return [
        *comparison,
        Field("rg", s),  # g's truncation mask, both shares seeded
        Field("Rg", s, p1_from_dealer=True),  # rg >> gbits
        Field("mg", s, p1_from_dealer=True, mask=_lowmask(gb)),  # msb(rg), needed mod 2^gbits
        Field("ah", s),  # h's Beaver mask
        Field("sRg", sj, p1_from_dealer=True),  # each block's random bit s_j times Rg, mg, ah
        Field("smg", sj, p1_from_dealer=True, mask=_lowmask(gb)),
        Field("sah", sj, p1_from_dealer=True),
    ]


def _ltz_lin_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    out = _ltz_correct({"drop": spec.get("drop", 0)}, s0, s1)
    Rg, mg = _raw_parts(s0, s1, "g", spec["gbits"])
    sbit = s0["sb"] ^ s1["sb"]
    ah = s0["ah"] + s1["ah"]
    out.update(
        Rg=Rg - s0["Rg"],
        mg=mg - s0["mg"],
        sRg=sbit * Rg - s0["sRg"],
        smg=sbit * mg - s0["smg"],
        sah=sbit * ah - s0["sah"],
    )
    return out


KINDS["ltz_lin"] = Kind(_ltz_lin_fields, _ltz_lin_correct)


# ---------------------------------------------------------------------------- Fourier masks


def _trig_fields(spec: dict[str, Any]) -> list[Field]:
    s = _shape(spec)
    k, bits, f = spec.get("k"), spec.get("bits"), spec.get("f")
    if not (isinstance(k, int) and 1 <= k <= 64 and isinstance(bits, int) and 1 <= bits <= 62):
        raise ProtocolError(f"trig spec needs 1 <= k <= 64 and 1 <= bits <= 62, got {spec}")
    if not (isinstance(f, int) and 0 <= f <= 30):
        raise ProtocolError(f"trig spec needs the fixed-point precision f, got {f!r}")
    return [
        Field("t", s),  # uniform ring mask, both shares seeded
        Field("sin", (k, *s), p1_from_dealer=True),  # sin(2 pi j (t mod 2^bits) / 2^bits), j = 1..k
        Field("cos", (k, *s), p1_from_dealer=True),
    ]


def _trig_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: Any = None) -> Fields:
    k, bits, f = spec["k"], spec["bits"], spec["f"]
    t = np.ascontiguousarray(s0["t"] + s1["t"]).ravel()
    shape = s0["sin"].shape
    sin0, cos0 = (np.ascontiguousarray(s0[name]).reshape(k, t.size) for name in ("sin", "cos"))
    sin1, cos1 = ring.trig_table(t, bits, k, f, sin0, cos0)  # P1's shares: table - P0's
    return {"sin": sin1.reshape(shape), "cos": cos1.reshape(shape)}


KINDS["trig"] = Kind(_trig_fields, _trig_correct)


# ---------------------------------------------------------------------------- fixed weight masks


def _wmask_fields(spec: dict[str, Any]) -> list[Field]:
    return [Field("b", _shape(spec))]  # both shares seeded: the mask B of one weight, fixed


def _wmask_prepare(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: DealerContext | None = None) -> Fields:
    if ctx is not None:  # the dealer builds its pre-split B now, during the one-off load
        ctx.weight_mask(spec["key"], _shape(spec))
    return {}


KINDS["wmask"] = Kind(_wmask_fields, _wmask_prepare, notify_dealer=True)


def _matmul_o_fields(spec: dict[str, Any]) -> list[Field]:
    """x @ W with W the model owner's plaintext weight (protocols.linear.matmul_owner): a mask A
    that P1 holds whole (P0 never sees it) and shares of C = A B, B the weight's fixed mask."""
    sa, sb = _shape(spec, "shape_a"), _shape(spec, "shape_b")
    if len(sa) != 2 or len(sb) != 2 or sa[1] != sb[0]:
        raise ProtocolError(f"matmul_o needs 2-D shapes that chain, got {sa} @ {sb}")
    if not isinstance(spec.get("wkey"), str):
        raise ProtocolError("matmul_o needs the key of the weight's mask")
    return [Field("a", sa, p1_only=True), Field("c", (sa[0], sb[1]), p1_from_dealer=True)]


def _matmul_o_correct(spec: dict[str, Any], s0: Fields, s1: Fields, ctx: DealerContext) -> Fields:
    b = ctx.weight_mask(spec["wkey"], _shape(spec, "shape_b"))
    return {"c": ring.matmul(s1["a"], b) - s0["c"]}


KINDS["matmul_o"] = Kind(_matmul_o_fields, _matmul_o_correct)
