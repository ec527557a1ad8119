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
    """A weight after its one-off opening: what this party needs for every query.

    Storage (``store``): "limbs" keeps B_i + [i=0]F and F pre-split (48 B per element, fastest);
    "ring" keeps them as uint64 (16 B, split per use); "lean" keeps only F (8 B) and regenerates
    this party's mask share B_i from its dealer seed per use (one AES pass over the weight)."""

    key: str
    shape: tuple[int, int]
    rhs: np.ndarray | ring.Limbs | None  # B_i + [i = 0] F (None: regenerate)
    f: np.ndarray | ring.Limbs  # F = W - B (public)

    @property
    def nbytes(self) -> int:
        return sum(
            v.limbs.nbytes if isinstance(v, ring.Limbs) else v.nbytes for v in (self.rhs, self.f) if v is not None
        )


STORES = {"limbs": 48, "ring": 16, "lean": 8}  # bytes per weight element per party


async def prepare_weight(rt, w: np.ndarray, store: str = "limbs") -> PreparedWeight:
    """Mask a 2-D weight share once. 1 round, 8 B per weight element per party; dealer: 0 B
    (the mask is seeded for both parties; the dealer prepares its copy of B)."""
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D, got shape {w.shape}")
    if store not in STORES:
        raise ValueError(f"store must be one of {sorted(STORES)}")
    key = next_key()
    b = (await rt.provider.get(key, "wmask", {"shape": list(w.shape)}))["b"]
    f = await open_(rt, w - b)
    if store == "lean":
        return PreparedWeight(key, w.shape, None, f)
    rhs = b + f if rt.party == 0 else b
    if store == "limbs":
        return PreparedWeight(key, w.shape, ring.Limbs(rhs), ring.Limbs(f))
    return PreparedWeight(key, w.shape, rhs, f)


def _rhs(rt, pw: PreparedWeight) -> np.ndarray | ring.Limbs:
    if pw.rhs is not None:
        return pw.rhs
    from secformer import material as mat

    b = mat.draw(rt.provider.prg, pw.key, mat.get_kind("wmask").fields({"shape": list(pw.shape)}), rt.party)["b"]
    return b + pw.f if rt.party == 0 else b


async def matmul_prepared(rt, x: np.ndarray, pw: PreparedWeight) -> np.ndarray:
    """x (..., k) @ W (k, n) with a prepared weight. 2 rounds (the opening, then the truncation);
    8 B per element of x and 8 B per output element per party; dealer 8 + 16 B per output
    element. Local: two ring matmuls against fixed operands."""
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    t = await rt.material("matmul_w", shape_a=list(x2.shape), shape_b=list(pw.shape), wkey=pw.key)
    e = await open_(rt, x2 - t["a"])
    z = t["c"] + ring.matmul(e, _rhs(rt, pw)) + ring.matmul(t["a"], pw.f)
    return (await truncate(rt, z)).reshape(*lead, pw.shape[1])
