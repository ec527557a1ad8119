"""BERT and GPT-2, written once against a backend (plaintext float64 or private MPC).

A backend provides ``embedding(n)``, ``linear(x, name)``, ``matmul(a, b)``, ``gelu(x)``,
``gelu_linear(x, name)`` (= ``linear(gelu(x), name)``, which a backend may fuse),
``softmax(x, mask)``, ``layernorm(x, name)``, ``tanh(x)``, ``argmax(x)`` (last axis) and
``layer_done(i, h)``. Tensors support ``+ - *`` (public scalars), slicing, ``reshape`` and
``transpose``: numpy arrays and :class:`secformer.session.SecretTensor` both do. Masks are public.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from secformer.errors import OutOfRangeError
from secformer.models.approx import MODES
from secformer.models.hf import ModelSpec


def attention_mask(spec: ModelSpec, mask: np.ndarray) -> np.ndarray:
    """Public (1, L, L) keep-mask: padding (BERT, GPT-2) and causality (GPT-2)."""
    L = mask.shape[-1]
    m = np.broadcast_to(mask.astype(np.float64)[None, :], (L, L))
    if spec.arch == "gpt2":
        m = m * np.tril(np.ones((L, L)))
    return m[None]


def _attention(B: Any, spec: ModelSpec, h: Any, i: int, amask: np.ndarray) -> Any:
    L, H, nh = h.shape[0], spec.hidden, spec.heads
    d = H // nh
    qkv = B.linear(h, f"L{i}.qkv")
    q = qkv[:, :H] if getattr(B, "q_prescaled", False) else qkv[:, :H] * (1.0 / np.sqrt(d))
    q = q.reshape(L, nh, d).transpose(1, 0, 2)
    k = qkv[:, H : 2 * H].reshape(L, nh, d).transpose(1, 2, 0)
    v = qkv[:, 2 * H :].reshape(L, nh, d).transpose(1, 0, 2)
    p = B.softmax(B.matmul(q, k), amask)
    ctx = B.matmul(p, v).transpose(1, 0, 2).reshape(L, H)
    return B.linear(ctx, f"L{i}.ao")


async def forward(B: Any, spec: ModelSpec, mask: np.ndarray, want: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The outputs named in ``want`` (default: all the model has), computed only if wanted:

    ``hidden`` (L, H); ``embedding`` (1, H), the mean over unmasked tokens; ``pooled`` (1, H) and
    ``logits`` (1, C) for BERT heads; for a GPT-2 LM, ``logits`` (L, V) at every position and
    ``next_logits`` (1, V) at the last unmasked one; ``label``/``token``: the argmax of the
    classifier's logits / of the next-token logits (see :mod:`secformer.models.outputs`)."""
    from secformer.models.outputs import available

    want = tuple(want) if want is not None else available(spec)
    L = mask.shape[-1]
    amask = attention_mask(spec, mask)
    h = B.embedding(L)
    if spec.arch == "bert":
        h = B.layernorm(h, "emb.ln")
    for i in range(spec.layers):
        if spec.arch == "bert":  # post-LN
            h = B.layernorm(h + _attention(B, spec, h, i, amask), f"L{i}.ln1")
            f = B.gelu_linear(B.linear(h, f"L{i}.ff1"), f"L{i}.ff2")
            h = B.layernorm(h + f, f"L{i}.ln2")
        else:  # GPT-2: pre-LN
            h = h + _attention(B, spec, B.layernorm(h, f"L{i}.ln1"), i, amask)
            h = h + B.gelu_linear(B.linear(B.layernorm(h, f"L{i}.ln2"), f"L{i}.ff1"), f"L{i}.ff2")
        await B.layer_done(i, h)
    out: dict[str, Any] = {}
    if spec.arch == "gpt2":
        h = B.layernorm(h, "lnf")
    if "hidden" in want:
        out["hidden"] = h
    if "embedding" in want:
        w = mask.astype(np.float64) / max(1.0, float(mask.sum()))
        out["embedding"] = w[None, :] @ h  # (1, H), public weights
    if spec.head in ("pooler", "classifier") and {"pooled", "logits", "label"} & set(want):
        pooled = B.tanh(B.linear(h[0:1], "pooler"))
        if "pooled" in want:
            out["pooled"] = pooled
        if spec.head == "classifier" and {"logits", "label"} & set(want):
            logits = B.linear(pooled, "cls")
            if "logits" in want:
                out["logits"] = logits
            if "label" in want:
                out["label"] = B.argmax(logits)
    if spec.head == "lm":
        if "logits" in want:
            out["logits"] = B.linear(h, "lm")
        if {"next_logits", "token"} & set(want):
            last = int(np.flatnonzero(mask)[-1]) if mask.any() else L - 1
            nxt = B.linear(h[last : last + 1], "lm")
            if "next_logits" in want:
                out["next_logits"] = nxt
            if "token" in want:
                out["token"] = B.argmax(nxt)
    return out


class PlainBackend:
    """float64 numpy with a mode's approximations (``exact`` reproduces the HF model)."""

    def __init__(self, spec: ModelSpec, weights: dict[str, np.ndarray], ids: np.ndarray, mode: str = "exact"):
        self.spec, self.ids = spec, np.asarray(ids)
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self._gelu, self._softmax, self._ln, self._tanh = MODES[mode]
        self.mode = mode

    def embedding(self, L: int) -> np.ndarray:
        h = self.w["emb.word"][self.ids[:L]] + self.w["emb.pos"][:L]
        if self.spec.arch == "bert":
            h = h + self.w["emb.type"][0]
        return h

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.w[f"{name}.w"]
        return y + self.w[f"{name}.b"] if f"{name}.b" in self.w else y

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b

    def gelu(self, x: np.ndarray) -> np.ndarray:
        return self._gelu(x)

    def gelu_linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return self.linear(self.gelu(x), name)

    def softmax(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._softmax(x, mask)

    def layernorm(self, x: np.ndarray, name: str) -> np.ndarray:
        return self._ln(x, self.w[f"{name}.g"], self.w[f"{name}.b"], self.spec.eps)

    def tanh(self, x: np.ndarray) -> np.ndarray:
        return self._tanh(x)

    def argmax(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(x, axis=-1).astype(np.float64)

    async def layer_done(self, i: int, h: np.ndarray) -> None:
        return None


async def plain_forward(
    spec: ModelSpec, weights: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, mode: str = "exact"
) -> dict[str, Any]:
    return await forward(PlainBackend(spec, weights, ids, mode), spec, np.asarray(mask))


def run_plain(spec, weights, ids, mask, mode="exact") -> dict[str, Any]:
    """The float64 runner's outputs; a non-finite output (an approximation driven out of the range
    it converges on, e.g. a Newton reciprocal of a too large sum) is an error, never an answer."""
    import asyncio

    out = asyncio.run(plain_forward(spec, weights, ids, mask, mode))
    bad = [k for k, v in out.items() if v is not None and not np.all(np.isfinite(np.asarray(v, dtype=float)))]
    if bad:
        raise OutOfRangeError(
            f"mode {mode!r}: the plaintext runner's {', '.join(bad)} is not finite: an approximation left the "
            "range it converges on (the private run stops with a range check here)"
        )
    return out
