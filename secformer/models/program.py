"""The party program of private inference (``--program secformer.models.program:infer``).

Inputs (npz): both parties ``model`` (directory; P1 reads only config.json and the tokenizer)
and ``mode``; P1 also ``texts`` (strings), optionally ``max_len`` and ``reveal`` (what it asks to
learn, default the task's result: :mod:`secformer.models.outputs`); P0 optionally
``unsafe_reveal`` (intermediate outputs it lets the client see) and ``max_queries`` (per session,
default 1000). P1's ``offline`` runs an offline phase before each query whose plan is known (an
earlier query's of its length, or one cached on disk): both parties fetch/draw its material,
within ``offline_memory`` bytes each, and the query's time is then its online time; query 0's
material is fetched while P0 loads the model. The sequence length (the
attention mask) and the names of the requested outputs are public: P1 sends them to P0, which
refuses any request beyond one task result and what it enabled. The model configuration's fingerprint and the
mode are compared in the handshake; a mismatch stops all three before any round.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secformer.errors import ProtocolError
from secformer.models import MODES
from secformer.models.hf import load_spec, load_tokenizer, load_weights
from secformer.models.outputs import check_request, decode_request, encode_request, task_results
from secformer.models.private import load_model, private_forward
from secformer.protocols import linear
from secformer.session import Session

log = logging.getLogger("secformer.models")
DEFAULT_MAX_QUERIES = 1000  # per session (one client): P0's bound on black-box extraction
DEFAULT_OFFLINE_MEMORY = 6e9  # bytes of one query's material a party holds ahead (the rest streams)


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


@dataclass
class Request:
    """One batch of queries as the model owner sees it: lengths, outputs asked for, offline flag."""

    lens: np.ndarray
    reveal: tuple[str, ...]
    offline: bool


def request_arrays(lens: np.ndarray, reveal: tuple[str, ...], offline: bool) -> list[np.ndarray]:
    """The public part of a batch as P1 sends it: token counts, output names, offline flag."""
    return [np.asarray(lens, dtype=np.int64), encode_request(reveal), np.array([offline], dtype=np.int64)]


async def send_request(sess: Session, lens: np.ndarray, reveal: tuple[str, ...], offline: bool) -> None:
    """P1: the public part of a batch (:func:`request_arrays`). 1 message."""
    await sess.rt.transfer(1, request_arrays(lens, reveal, offline))


def parse_request(
    got: list[np.ndarray] | None, spec: Any, unsafe: tuple[str, ...], max_queries: int, max_len: int | None = None
) -> Request:
    """P0: check a client's request (:func:`send_request`) against its limits; raises ProtocolError."""
    if got is None or len(got) != 3 or got[2].shape != (1,) or got[0].ndim != 1 or got[0].dtype != np.int64:
        raise ProtocolError("the client's request is malformed (lengths, outputs, offline flag)")
    lens, req_arr, flags = got
    if len(lens) > max_queries:
        raise ProtocolError(
            f"the client asked for {len(lens)} queries; this model owner answers at most {max_queries} per "
            "session (max_queries): every answer is a data point for black-box model extraction"
        )
    top = min(spec.max_pos, max_len or spec.max_pos)
    if len(lens) and (lens.min() < 1 or lens.max() > top):
        raise ProtocolError(f"the client asked for texts of {lens.min()}..{lens.max()} tokens; allowed 1..{top}")
    return Request(lens, check_request(spec, decode_request(req_arr), unsafe=unsafe), bool(flags[0]))


@dataclass
class QueryState:
    """What a session keeps between batches: the next query index, which earlier query had each
    (length, outputs) (its plan is the next one's), the plan caches on disk."""

    spec: Any
    mode: str
    cache: bool = True
    cache_dir: str | None = None
    next_q: int = 0
    first: dict[tuple[int, tuple[str, ...]], int] = field(default_factory=dict)
    caches: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def plans(self, reveal: tuple[str, ...]) -> Any:
        if not self.cache:
            return None
        if reveal not in self.caches:
            from secformer.plans import PlanCache, default_dir

            where = Path(self.cache_dir) if self.cache_dir else default_dir()
            self.caches[reveal] = PlanCache(where, self.spec.fingerprint(), self.mode, ",".join(reveal))
        return self.caches[reveal]


async def answer(
    sess: Session,
    model: Any,
    state: QueryState,
    ids: list[np.ndarray | None],
    masks: list[np.ndarray],
    reveal: tuple[str, ...],
    offline: bool = False,
    memory: float = DEFAULT_OFFLINE_MEMORY,
    ahead: Any = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Run one batch of queries (both parties; P0 passes ``ids`` of None). With ``offline`` each
    query's material is fetched first (``ahead``: query 0's offline phase, already running)."""
    plans = state.plans(reveal)
    by_key = {pw.key: pw for pw in model.matrices.values()}
    results = []
    for i, m in zip(ids, masks, strict=True):
        q = state.next_q
        state.next_q += 1
        log.info("query %d: %d tokens", q, len(m), extra={"event": "query"})
        L = len(m)
        earlier = state.first.get((L, reveal))
        plan = sess.plan(earlier) if earlier is not None else (plans.load(L) if plans else None)
        t_off, off_bytes = 0.0, 0
        if offline:  # both parties: material first (P0 draws its seeded share), then the online phase
            if ahead is not None:
                t_off, ahead = await ahead, None
            elif plan:
                t_off = await sess.offline(plan, q, memory)
            t0 = time.perf_counter()  # P1's products with the masked weights need no input,
            linear.precompute_owner(sess.rt.provider, by_key)  # nor its parts of their truncations
            off_bytes = await linear.send_truncation_parts(sess.rt)
            t_off += time.perf_counter() - t0
            await sess.barrier()
        elif plan:
            sess.stream(plan, q)
        state.first.setdefault((L, reveal), q)
        r = await sess.run_query(q, private_forward, sess, model, i, m, state.mode, reveal, progress=progress)
        r["stats"]["offline_time"] = t_off
        r["stats"]["offline_bytes"] = off_bytes  # P1 -> P0 in the offline phase
        results.append(r)
        if plans is not None and not plan:
            plans.save(L, sess.plan(q))
    return results


async def infer(sess: Session, inputs: dict[str, Any]) -> dict[str, Any]:
    model_dir = str(inputs["model"])
    mode = str(inputs.get("mode", "secformer"))
    spec = load_spec(model_dir)
    log.info("model %s: %d layers, hidden %d, mode %s", spec.arch, spec.layers, spec.hidden, mode)
    # the request first: P0 refuses it before loading anything, P1's offline phase overlaps the load
    ids: list[np.ndarray | None]
    if sess.party == 1:
        ids_l, masks = tokenize(model_dir, [str(t) for t in inputs["texts"]], int(inputs.get("max_len", 128)))
        req = _names(inputs.get("reveal")) or task_results(spec)[:1]
        reveal = check_request(spec, req, unsafe=req)  # the shape of the request; P0 judges the rest
        offline = bool(inputs.get("offline", False))
        await send_request(sess, np.array([len(m) for m in masks], dtype=np.int64), reveal, offline)
        ids = list(ids_l)
    else:
        got = await sess.rt.transfer(1, None)
        limit = int(inputs.get("max_queries", DEFAULT_MAX_QUERIES))
        r = parse_request(got, spec, _names(inputs.get("unsafe_reveal")), limit)
        reveal, offline = r.reveal, r.offline
        masks = [np.ones(int(n), dtype=np.int64) for n in r.lens]
        ids = [None] * len(masks)
    where = inputs.get("plan_cache_dir")
    state = QueryState(spec, mode, bool(inputs.get("plan_cache", True)), str(where) if where else None)
    plans = state.plans(reveal)
    memory = float(inputs.get("offline_memory", DEFAULT_OFFLINE_MEMORY))
    first = plans.load(len(masks[0])) if plans and masks else None
    ahead = None  # P1 fetches query 0's material while P0 loads the model
    if offline and first and sess.party == 1:
        ahead = asyncio.get_running_loop().create_task(sess.offline(first, 0, memory))
    try:
        weights = load_weights(model_dir, spec)[1] if sess.party == 0 else None
        model = await load_model(sess, spec, weights)
        del weights
    except BaseException:
        if ahead is not None:
            ahead.cancel()
        raise
    progress = None
    if sess.party == 1 and inputs.get("progress", False):
        from tqdm import tqdm

        progress = tqdm(
            total=spec.layers * len(masks), desc=f"private {mode} ({spec.layers} layers)", unit="layer", file=sys.stderr
        )
    results = await answer(sess, model, state, ids, masks, reveal, offline, memory, ahead, progress)
    if progress is not None:
        progress.close()
    return {"results": results, "load": model.load_stats, "spec": spec, "mode": mode, "reveal": reveal}


def _names(v: Any) -> tuple[str, ...]:
    """Output names from an input: a list/array of strings or one comma-separated string."""
    if v is None:
        return ()
    arr = np.asarray(v)
    items = [str(arr)] if arr.ndim == 0 else [str(x) for x in arr.ravel()]
    return tuple(n.strip() for item in items for n in item.split(",") if n.strip())


infer.handshake = _handshake  # type: ignore[attr-defined]
