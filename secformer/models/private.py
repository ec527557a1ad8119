"""Private inference: the program P0 (model owner) and P1 (client) run, and its backend.

P0 secret-shares the weights (P1 learns nothing but the public architecture) and masks every
weight matrix once (:mod:`secformer.protocols.linear`); P1 secret-shares its tokens as one-hot
rows; the forward pass of :mod:`secformer.models.forward` runs on shares with the chosen mode's
protocols; only P1 learns the outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secformer import ring
from secformer.errors import OutOfRangeError
from secformer.material import PRESPLIT_MEMORY
from secformer.models.forward import forward
from secformer.models.hf import ModelSpec
from secformer.protocols import base, crypten, linear, mpcformer, puma
from secformer.protocols import secformer as sf
from secformer.session import SecretTensor, Session

MODE_PROTOCOLS = {
    # mode: (gelu, softmax, layernorm, tanh)
    "secformer": (sf.gelu_secformer, sf.softmax_2quad, sf.layernorm_secformer, sf.tanh_fourier),
    "crypten": (crypten.gelu_crypten_tanh, crypten.softmax_crypten, crypten.layernorm_crypten, crypten.tanh_crypten),
    "puma": (puma.gelu_puma, puma.softmax_puma, sf.layernorm_secformer, sf.tanh_fourier),
    "mpcformer": (mpcformer.gelu_quad, mpcformer.softmax_2quad_newton, crypten.layernorm_crypten, crypten.tanh_crypten),
}
MATRICES = ("qkv", "ao", "ff1", "ff2", "pooler", "cls", "lm")


@dataclass
class LoadedModel:
    """A model shared and masked once; reused for every query of the session."""

    spec: ModelSpec
    vectors: dict[str, SecretTensor]  # biases, LayerNorm gains, position/type tables
    matrices: dict[str, linear.PreparedWeight]
    load_stats: dict[str, Any] = field(default_factory=dict)


async def load_model(
    sess: Session,
    spec: ModelSpec,
    weights: dict[str, np.ndarray] | None,
    memory_budget: float = PRESPLIT_MEMORY,
    owner_limbs: dict[str, Any] | None = None,
) -> LoadedModel:
    """P0 shares ``weights`` (P1 passes None); every matrix is masked and opened once.

    ``owner_limbs`` (P0 of a model server): P0's encoded weights by name, filled by the first
    session and reused by the next (they do not depend on the session; its masks do).

    One round for the shape checks and one for all openings (8 B per weight element per party).
    P0 keeps its plaintext weights, encoded and pre-split (8 B per element); P1 keeps F = W - B
    pre-split with the sum of its first two limbs (32 B), then pre-split (24 B) while
    ``memory_budget`` lasts, then as uint64 (8 B, split per use), so
    BERT-large fits two parties and the dealer on a 24 GiB machine.
    """
    t0 = time.perf_counter()
    before = sess.stats()
    shapes = spec.weight_shapes()
    if weights is not None:  # P0 folds attention's 1/sqrt(d) into W_q and b_q (no product per query)
        check_layernorm_gains(weights)
        prescale_queries(spec, weights)

    def share(k: str) -> SecretTensor:  # P0's plaintext vector weights are dropped once shared
        return sess.input(0, None if weights is None else weights.pop(k), shapes[k])

    names = [k for k, shp in shapes.items() if len(shp) == 2 and k.split(".")[-2] in MATRICES] + ["emb.word"]
    vectors = {k: share(k) for k in shapes if k not in names}
    total = sum(int(np.prod(shapes[k])) for k in names)
    budget = memory_budget - 8 * total  # P1 keeps F at least (8 B per element)
    matrices: dict[str, linear.PreparedWeight] = {}
    batch: list[str] = []
    # masked in batches of ~256 MB of shares: all at once would hold every share, mask and
    # temporary together (BERT-large: more than 24 GiB for the three processes)
    for idx, k in enumerate(names):
        batch.append(k)
        size = sum(8 * int(np.prod(shapes[b])) for b in batch)
        if size < 256e6 and idx < len(names) - 1:
            continue
        pending = {}
        for b in batch:
            n = int(np.prod(shapes[b]))
            stores = [s for s in linear.STORES if s != "karatsuba" or ring.uses_limb_sum(shapes[b][0])]
            store = next(s for s in stores if (linear.STORES[s] - 8) * n <= budget)
            budget -= (linear.STORES[store] - 8) * n
            plain: Any = None
            if weights is not None:
                cached = owner_limbs.get(b) if owner_limbs is not None else None
                plain = cached if cached is not None else sess.fx.encode(weights[b], f"weight {b}")
            pending[b] = sess.protocol(_prepare, shapes[b], share(b), store=store, plain=plain, category="weights")
        for b, t in pending.items():
            matrices[b] = await t._task  # PreparedWeight objects (not shares)
            if owner_limbs is not None and weights is not None:
                owner_limbs[b] = matrices[b].w
        batch = []
    for v in vectors.values():
        await v.share()
    await sess.barrier()  # both parties have received every opening before the first query
    after = sess.stats()
    stats = {
        "time": time.perf_counter() - t0,
        "online_bytes_sent": after["online_bytes_sent"] - before["online_bytes_sent"],
        "rounds": after["rounds"] - before["rounds"],
        "prepared_bytes": sum(m.nbytes for m in matrices.values()),
    }
    return LoadedModel(spec, vectors, matrices, stats)


def check_layernorm_gains(weights: dict[str, np.ndarray]) -> None:
    """P0: every LayerNorm gain within the range of SecFormer's LayerNorm, |gamma| sqrt(n) <
    2^14 (:data:`secformer.protocols.secformer.LN_GAMMA_BOUND`; real models stay below 30). A
    model beyond it is refused before anything is shared, instead of overflowing the ring."""
    for k, g in weights.items():
        if k.endswith(".g") and ("ln" in k.split(".")[-2]):
            g = np.asarray(g, dtype=np.float64)
            over = np.abs(g) * np.sqrt(g.shape[-1]) >= sf.LN_GAMMA_BOUND
            if over.any():  # the count and the bound, never the values: the peers see this message
                raise OutOfRangeError(
                    f"LayerNorm gain {k}: {int(over.sum())} of {g.size} values with |gamma| sqrt(n) >= "
                    f"{sf.LN_GAMMA_BOUND:g}, beyond the range of the private LayerNorm"
                )


def prescale_queries(spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
    """Scale the query projection by 1/sqrt(head dim) in place (P0, plaintext): the private
    backend then skips that product (:attr:`PrivateBackend.q_prescaled`)."""
    H = spec.hidden
    s = 1.0 / np.sqrt(H // spec.heads)
    for i in range(spec.layers):
        for k in (f"L{i}.qkv.w", f"L{i}.qkv.b"):
            w = np.array(weights[k], dtype=np.float32)
            w[..., :H] *= s
            weights[k] = w


async def _prepare(rt, w: np.ndarray, store: str, plain: np.ndarray | None) -> Any:
    return await linear.prepare_weight(rt, w, store, plain)


class PrivateBackend:
    """Forward-pass backend on secret shares."""

    q_prescaled = True  # load_model folded 1/sqrt(d) into the query weights

    def __init__(self, sess: Session, model: LoadedModel, onehot: SecretTensor, mode: str, progress: Any = None):
        self.sess, self.m, self.onehot = sess, model, onehot
        self._gelu, self._softmax, self._ln, self._tanh = MODE_PROTOCOLS[mode]
        self.progress = progress
        self.layer_times: list[float] = []
        self.layer = 0  # the layer being written down (names range-check failures)
        self._t = time.perf_counter()

    def embedding(self, L: int) -> SecretTensor:
        spec = self.m.spec
        pw = self.m.matrices["emb.word"]
        h = self.sess.protocol(linear.matmul_owner, (L, spec.hidden), self.onehot, pw=pw, category="embedding")
        h = h + self.m.vectors["emb.pos"][:L]
        if spec.arch == "bert":
            h = h + self.m.vectors["emb.type"][0:1]
        return h

    def linear(self, x: SecretTensor, name: str, extra: int = 0) -> SecretTensor:
        pw = self.m.matrices[f"{name}.w"]
        shape = (*x.shape[:-1], pw.shape[1])
        y = self.sess.protocol(linear.matmul_owner, shape, x, pw=pw, extra=extra, category="linear")
        b = self.m.vectors.get(f"{name}.b")
        return y + b if b is not None else y

    def gelu_linear(self, x: SecretTensor, name: str) -> SecretTensor:
        """linear(gelu(x)): a GeLU that can return 2 GeLU (SecFormer's) leaves the halving to the
        linear layer's truncation (one truncation fewer per element)."""
        if getattr(self._gelu, "doubles", False):
            g2 = self.sess.protocol(self._gelu, x.shape, x, double=True, category="gelu", site=f"layer {self.layer}")
            return self.linear(g2, name, extra=1)
        return self.linear(self.gelu(x), name)

    def matmul(self, a: SecretTensor, b: SecretTensor) -> SecretTensor:
        from secformer.session import matmul_shape

        return self.sess.protocol(base.matmul, matmul_shape(a.shape, b.shape), a, b, category="linear")

    def gelu(self, x: SecretTensor) -> SecretTensor:
        return self.sess.protocol(self._gelu, x.shape, x, category="gelu", site=f"layer {self.layer}")

    def softmax(self, x: SecretTensor, mask: np.ndarray) -> SecretTensor:
        return self.sess.protocol(
            _softmax, x.shape, x, softmax_fn=self._softmax, mask=mask, category="softmax", site=f"layer {self.layer}"
        )

    def layernorm(self, x: SecretTensor, name: str) -> SecretTensor:
        g, b = self.m.vectors[f"{name}.g"], self.m.vectors[f"{name}.b"]
        return self.sess.protocol(self._ln, x.shape, x, g, b, eps=self.m.spec.eps, category="layernorm", site=name)

    def tanh(self, x: SecretTensor) -> SecretTensor:
        return self.sess.protocol(self._tanh, x.shape, x, category="tanh")

    def argmax(self, x: SecretTensor) -> SecretTensor:
        return self.sess.protocol(base.argmax, x.shape[:-1], x, category="argmax")

    async def layer_done(self, i: int, h: SecretTensor) -> None:
        self.layer = i + 1
        await h.share()
        now = time.perf_counter()
        self.layer_times.append(now - self._t)
        self._t = now
        if self.progress is not None:
            self.progress.update(1)


async def _softmax(rt, x: np.ndarray, softmax_fn: Any, mask: np.ndarray) -> np.ndarray:
    return await softmax_fn(rt, x, mask)


async def private_forward(
    sess: Session,
    model: LoadedModel,
    ids: np.ndarray | None,
    mask: np.ndarray,
    mode: str = "secformer",
    reveal: tuple[str, ...] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """One query: P1 passes token ids (P0 passes None); ``mask`` (public) fixes the length.

    ``reveal`` names what P1 learns; both parties must pass the same names, validated by
    :func:`secformer.models.outputs.check_request` (default: the task's one result). Returns the
    revealed outputs to P1 (None values to P0) and the query's statistics."""
    from secformer.models.outputs import task_results

    spec = model.spec
    reveal = tuple(reveal) if reveal is not None else task_results(spec)[:1]
    L = int(np.asarray(mask).shape[-1])
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (L,) or ids.min() < 0 or ids.max() >= spec.vocab:
            raise ValueError(f"token ids must be {L} integers in [0, {spec.vocab})")
        onehot_v = np.zeros((L, spec.vocab))
        onehot_v[np.arange(L), ids] = 1.0
    else:
        onehot_v = None
    before = sess.stats()
    t0 = time.perf_counter()
    onehot = sess.input(1, onehot_v, (L, spec.vocab))
    B = PrivateBackend(sess, model, onehot, mode, progress)
    out = await forward(B, spec, np.asarray(mask), reveal)
    revealed = {}
    for k in reveal:
        v = await sess.reveal(out[k], to=1)
        if v is not None:
            _check_output(sess, k, v)
            revealed[k] = np.rint(v).astype(np.int64) if k in ("label", "token") else v
        else:
            revealed[k] = None
    after = sess.stats()
    stats = {
        "time": time.perf_counter() - t0,
        "layer_times": B.layer_times,
        "online_bytes_sent": after["online_bytes_sent"] - before["online_bytes_sent"],
        "dealer_bytes_recv": after["dealer_bytes_recv"] - before["dealer_bytes_recv"],
        "dealer_wait_time": after["dealer_wait_time"] - before["dealer_wait_time"],
        "dealer_waits": after["dealer_waits"] - before["dealer_waits"],
        "dealer_requests": after["dealer_requests"] - before["dealer_requests"],
        "rounds": after["rounds"] - before["rounds"],
        "cpu_time": after["cpu_time"] - before["cpu_time"],  # this role's CPU seconds (all threads)
        "by_category": _cat_delta(after["by_category"], before["by_category"]),
    }
    return {"outputs": revealed, "stats": stats}


def _check_output(sess: Session, name: str, v: np.ndarray) -> None:
    """P1: a revealed output beyond half the fixed-point range is saturated or wrapped (a value
    of the computation overflowed the ring): stop with an error instead of returning it."""
    bad = np.abs(v) >= sess.fx.bound / 2
    if bad.any():
        raise OutOfRangeError(
            f"output {name!r}: {int(bad.sum())} of {v.size} values at or beyond {sess.fx.bound / 2:g}, the "
            "fixed-point range: the computation overflowed (an undistilled model in an approximation mode?)"
        )


def _cat_delta(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {m: v[m] - b.get(k, {}).get(m, 0) for m in v} for k, v in a.items()}
