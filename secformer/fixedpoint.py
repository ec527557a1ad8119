"""Fixed-point encoding of real numbers into the ring Z_2^64.

A real x is encoded as round(x * 2^f) mod 2^64 (two's complement), f fractional bits.
Shares are uint64 arrays; arithmetic wraps mod 2^64 (numpy uint64 semantics).

The *safe range* is |x| <= max_abs with max_abs = 2^(31 - f) by default (2^15 = 32768 for
f = 16): the product of two safe values, before truncation, is below 2^62 and cannot wrap.
Encoding rejects anything outside it with :class:`FixedPointRangeError`, never wraps silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secformer.errors import FixedPointRangeError

RING_BITS = 64


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point format: ``frac_bits`` fractional bits, values bounded by ``max_abs``."""

    frac_bits: int = 16
    max_abs: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 30:
            raise FixedPointRangeError(f"frac_bits must be in [0, 30], got {self.frac_bits}")
        if self.max_abs is not None and not 0 < self.max_abs <= 2.0 ** (62 - self.frac_bits):
            raise FixedPointRangeError(f"max_abs must be in (0, 2^{62 - self.frac_bits}], got {self.max_abs}")

    @property
    def scale(self) -> int:
        """2^f, the encoding of 1.0."""
        return 1 << self.frac_bits

    @property
    def bound(self) -> float:
        """Largest |x| accepted by :meth:`encode`."""
        if self.max_abs is not None:
            return float(self.max_abs)
        return float(2.0 ** (31 - self.frac_bits))

    def check_range(self, x: np.ndarray, what: str = "value") -> None:
        """Raise :class:`FixedPointRangeError` (how many, not which values) if any |x| > bound."""
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return
        finite = np.isfinite(x)
        if not finite.all():
            raise FixedPointRangeError(f"{what} contains {int((~finite).sum())} non-finite value(s) (NaN or inf)")
        over = np.abs(x) > self.bound
        if over.any():  # the count and the bound, never the values: they may be secret
            raise FixedPointRangeError(
                f"{what}: {int(over.sum())} of {x.size} values out of fixed-point range (|x| > bound {self.bound:g}, "
                f"frac_bits={self.frac_bits}); scale the input or raise max_abs"
            )

    def encode(self, x: np.ndarray | float, what: str = "value") -> np.ndarray:
        """Encode reals to ring elements (uint64), rejecting other dtypes and out-of-range values."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":  # bool, int, uint, float; not complex, str, object, ...
            raise FixedPointRangeError(f"{what} has dtype {arr.dtype}; only real numbers can be secret-shared")
        x = arr.astype(np.float64)
        self.check_range(x, what)
        return np.rint(x * self.scale).astype(np.int64).view(np.uint64)

    def decode(self, u: np.ndarray) -> np.ndarray:
        """Decode ring elements (uint64, two's complement) to float64."""
        u = np.asarray(u, dtype=np.uint64)
        return u.view(np.int64).astype(np.float64) / self.scale
