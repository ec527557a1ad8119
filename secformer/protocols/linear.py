"""Linear layers with the model owner's weights masked once per loaded model.

A weight W (P0's secret) is masked with a fixed dealer mask B and F = W - B is opened once, when
the model is loaded. Each query then opens only its own activations: for x @ W the dealer sends
a fresh A and C = A B (same B), the parties open E = x - A, and

    x W = E F + E B + A F + A B,  so  z_i = C_i + E (B_i + [i = 0] F) + A_i F.

Both right operands are fixed per model and kept pre-split for the ring matmul. Reusing B with
fresh A is standard for fixed operands: F is opened once, E is uniform for every query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from secformer import ring
from secformer.protocols.base import open_, truncate
from secformer.runtime import next_key


@dataclass
class PreparedWeight:
    """A weight after its one-off opening: what this party needs for every query."""

    key: str
    shape: tuple[int, int]
    rhs: np.ndarray | ring.Limbs  # B_i + [i = 0] F
    f: np.ndarray | ring.Limbs  # F = W - B (public)

    @property
    def nbytes(self) -> int:
        return sum(v.limbs.nbytes if isinstance(v, ring.Limbs) else v.nbytes for v in (self.rhs, self.f))


async def prepare_weight(rt, w: np.ndarray, presplit: bool = True) -> PreparedWeight:
    """Mask a 2-D weight share once. 1 round, 8 B per weight element per party; dealer: 0 B
    (the mask is seeded for both parties). ``presplit`` keeps the float64 limbs (48 B/element)
    so each query skips the split; otherwise 16 B/element are kept and split per use."""
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {w.shape}")
    key = next_key()
    b = (await rt.provider.get(key, "wmask", {"shape": list(w.shape)}))["b"]
    f = await open_(rt, w - b)
    rhs = b + f if rt.party == 0 else b
    if presplit:
        return PreparedWeight(key, w.shape, ring.Limbs(rhs), ring.Limbs(f))
    return PreparedWeight(key, w.shape, rhs, f)


async def matmul_prepared(rt, x: np.ndarray, pw: PreparedWeight) -> np.ndarray:
    """x (..., k) @ W (k, n) with a prepared weight. 1 round; 8 B per element of x per party;
    dealer 8 B per output element. Local: two ring matmuls against fixed operands."""
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    t = await rt.material("matmul_w", shape_a=list(x2.shape), shape_b=list(pw.shape), wkey=pw.key)
    e = await open_(rt, x2 - t["a"])
    z = t["c"] + ring.matmul(e, pw.rhs) + ring.matmul(t["a"], pw.f)
    return truncate(rt, z).reshape(*lead, pw.shape[1])
