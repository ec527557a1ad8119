"""The party program of private inference (``--program secformer.models.program:infer``).

Inputs (npz): both parties ``model`` (directory; P1 reads only config.json and the tokenizer)
and ``mode``; P1 also ``texts`` (strings) and optionally ``max_len``. The sequence length (the
attention mask) is public: P1 sends it to P0. The model configuration's fingerprint and the
mode are compared in the handshake; a mismatch stops all three before any round.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

from secformer.errors import ProtocolError
from secformer.models import MODES
from secformer.models.hf import load_spec, load_tokenizer, load_weights
from secformer.models.private import load_model, private_forward
from secformer.session import Session

log = logging.getLogger("secformer.models")


def tokenize(model_dir: str, texts: list[str], max_len: int = 128) -> tuple[list[np.ndarray], list[np.ndarray]]:
    tok = load_tokenizer(model_dir)
    ids, masks = [], []
    for t in texts:
        enc = tok(t, truncation=True, max_length=max_len, return_tensors="np")
        ids.append(enc["input_ids"][0].astype(np.int64))
        masks.append(enc["attention_mask"][0].astype(np.int64))
    return ids, masks


def _handshake(inputs: dict[str, Any]) -> dict[str, str]:
    """Compared with the peer's before any round: the model configuration's hash and the mode."""
    mode = str(inputs.get("mode", "secformer"))
    if mode not in MODES:
        raise ProtocolError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    spec = load_spec(str(inputs["model"]))
    return {"model configuration": spec.fingerprint(), "approximation mode": mode}


async def infer(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    model_dir = str(inputs["model"])
    mode = str(inputs.get("mode", "secformer"))
    spec = load_spec(model_dir)
    log.info("model %s: %d layers, hidden %d, mode %s", spec.arch, spec.layers, spec.hidden, mode)
    weights = load_weights(model_dir, spec)[1] if sess.party == 0 else None
    model = await load_model(sess, spec, weights)
    del weights
    ids: list[np.ndarray | None]
    if sess.party == 1:
        ids_l, masks = tokenize(model_dir, [str(t) for t in inputs["texts"]], int(inputs.get("max_len", 128)))
        lens = np.array([len(m) for m in masks], dtype=np.int64)
        await sess.rt.transfer(1, [lens])
        ids = list(ids_l)
    else:
        (lens,) = await sess.rt.transfer(1, None)
        masks = [np.ones(int(n), dtype=np.int64) for n in lens]
        ids = [None] * len(masks)
    progress = None
    if sess.party == 1 and inputs.get("progress", False):
        from tqdm import tqdm

        progress = tqdm(
            total=spec.layers * len(masks), desc=f"private {mode} ({spec.layers} layers)", unit="layer", file=sys.stderr
        )
    results = []
    first_of_len: dict[int, int] = {}
    for q, (i, m) in enumerate(zip(ids, masks, strict=True)):
        log.info("query %d: %d tokens", q, len(m), extra={"event": "query"})
        if len(m) in first_of_len:  # same structure as an earlier query: its plan streams the material
            sess.stream(sess.plan(first_of_len[len(m)]), q)
        first_of_len.setdefault(len(m), q)
        results.append(await sess.run_query(q, private_forward, sess, model, i, m, mode, progress=progress))
    if progress is not None:
        progress.close()
    return {"results": results, "load": model.load_stats, "spec": spec, "mode": mode}


infer.handshake = _handshake  # type: ignore[attr-defined]
