"""The session program of a served model: what P0 (the model server) and a client (P1) run.

A session, after the handshake (:mod:`secformer.server`, :mod:`secformer.client`):

1. P0 -> P1: the model's public files (config.json and the tokenizer: the architecture and
   vocabulary a client needs to tokenize and to know the outputs; never a weight). 1 message.
2. Both: :func:`secformer.models.private.load_model`: P0 shares and masks its weights for this
   session (the masks are the session's own; P0 reuses its encoded weights across sessions).
3. Batches, as long as the client wants: P1 -> P0 a request (op, then the public part of
   :func:`secformer.models.program.send_request`); both run
   :func:`secformer.models.program.answer`. ``op = close`` ends the session.

P0 waits at most ``idle_timeout`` for the next request; a batch is checked against P0's limits
(:func:`secformer.models.program.parse_request`) before any round of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from secformer.errors import ProtocolError
from secformer.material import PRESPLIT_MEMORY
from secformer.models.hf import TOKENIZER_FILES, ModelSpec, spec_from_config
from secformer.models.private import load_model
from secformer.models.program import QueryState, answer, parse_request, request_arrays
from secformer.session import Session

log = logging.getLogger("secformer.serving")

OP_CLOSE, OP_QUERY = 0, 1
# what P0 sends a client: the architecture and the tokenizer, nothing with weights
PUBLIC_FILES = ("config.json", *TOKENIZER_FILES)
MAX_PUBLIC_BYTES = 64 << 20


def program_identity() -> tuple[str, str]:
    """(name, hash of this module's source): P0 and the client must run the same session program."""
    src = Path(__file__).read_bytes()
    return "secformer.serving", hashlib.sha256(src).hexdigest()[:32]


# ---------------------------------------------------------------------------- public files


def pack_public(model_dir: str | Path) -> np.ndarray:
    """The model's public files as one byte array (msgpack map name -> bytes)."""
    d = Path(model_dir)
    files = {n: (d / n).read_bytes() for n in PUBLIC_FILES if (d / n).is_file()}
    return np.frombuffer(msgpack.packb(files), dtype=np.uint8).copy()


def unpack_public(blob: np.ndarray, root: Path) -> Path:
    """Write the public files a server sent under ``root/<hash>/`` and return that directory.
    Only the known file names are accepted (no paths), within :data:`MAX_PUBLIC_BYTES`."""
    if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size > MAX_PUBLIC_BYTES:
        raise ProtocolError("the server's model files are malformed or too large")
    data = blob.tobytes()
    try:
        files = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ProtocolError(f"the server's model files do not decode: {exc}") from None
    if not isinstance(files, dict) or "config.json" not in files:
        raise ProtocolError("the server sent no config.json")
    for name, content in files.items():
        if name not in PUBLIC_FILES or not isinstance(content, bytes):
            raise ProtocolError(f"the server sent an unexpected file {name!r}")
    out = root / hashlib.sha256(data).hexdigest()[:24]
    if not (out / "config.json").is_file():
        tmp = out.with_suffix(".part")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        tmp.replace(out) if not out.exists() else None
    return out


def spec_of(model_dir: Path) -> ModelSpec:
    return spec_from_config(json.loads((model_dir / "config.json").read_text()))


# ---------------------------------------------------------------------------- P0


@dataclass
class SessionControl:
    """P0's view of one session, shared with the server (status, limits, drain)."""

    max_queries: int = 1000
    max_len: int = 512
    max_batch: int = 64
    offline_memory: float = 2e9
    idle_timeout: float = 600.0
    unsafe_reveal: tuple[str, ...] = ()
    client: str = ""
    quota: int = 0  # queries per client across its sessions (0: no bound), counted in ``account``
    account: dict[str, int] = field(default_factory=dict)
    state: str = "handshake"  # handshake | loading | idle | query
    queries: int = 0
    batches: int = 0
    draining: bool = False
    load_time: float = 0.0
    latencies: list[float] = field(default_factory=list)


class DrainedError(ProtocolError):
    """The server is shutting down: the session ends after its running batch."""


async def owner_session(
    sess: Session,
    spec: ModelSpec,
    mode: str,
    weights: dict[str, np.ndarray],
    public: np.ndarray,
    limbs: dict[str, Any],
    ctl: SessionControl,
) -> None:
    """P0's side of a session (see the module doc). Returns when the client closes."""
    await sess.rt.transfer(0, [public])
    ctl.state = "loading"
    model = await load_model(sess, spec, dict(weights), owner_limbs=limbs)
    ctl.load_time = model.load_stats["time"]
    state = QueryState(spec, mode)
    while True:
        ctl.state = "idle"
        got = await sess.rt.transfer(1, None, timeout=ctl.idle_timeout)
        if got is None or not got or got[0].shape != (1,) or got[0].dtype != np.int64:
            raise ProtocolError("the client's request has no operation")
        op = int(got[0][0])
        if op == OP_CLOSE:
            return
        if op != OP_QUERY:
            raise ProtocolError(f"unknown operation {op} from the client")
        n = int(got[1].size) if len(got) > 1 else 0
        left = ctl.max_queries - ctl.queries
        quota_left = ctl.quota - ctl.account.get(ctl.client, 0) if ctl.quota else n
        for limit, what in (
            (ctl.max_batch, "texts per call (max_batch)"),
            (left, "more queries in this session (max_queries)"),
            (quota_left, "more queries for this client, across its sessions (client quota)"),
        ):
            if n > limit:
                raise ProtocolError(f"the client asked for {n} queries; the server answers at most {limit} {what}")
        req = parse_request(got[1:], spec, ctl.unsafe_reveal, n, ctl.max_len)
        ctl.state = "query"
        # charged when accepted (before any await): concurrent sessions of one client cannot overshoot
        ctl.account[ctl.client] = ctl.account.get(ctl.client, 0) + len(req.lens)
        masks = [np.ones(int(n), dtype=np.int64) for n in req.lens]
        results = await answer(
            sess, model, state, [None] * len(masks), masks, req.reveal, req.offline, ctl.offline_memory
        )
        ctl.queries += len(results)
        ctl.batches += 1
        ctl.latencies += [float(r["stats"]["time"]) for r in results]
        if ctl.draining:
            raise DrainedError("the model server is shutting down (drain): open a new session later")


# ---------------------------------------------------------------------------- P1


async def client_open(sess: Session, cache_root: Path, memory: float = PRESPLIT_MEMORY) -> tuple[Path, ModelSpec, Any]:
    """P1: receive the public files, then the model's masking (the masked weights kept pre-split
    within ``memory`` bytes, beyond as plain ring elements). Returns (files dir, spec, model)."""
    got = await sess.rt.transfer(0, None)
    if got is None or len(got) != 1:
        raise ProtocolError("the server's model files are malformed")
    model_dir = unpack_public(got[0], cache_root)
    spec = spec_of(model_dir)
    model = await load_model(sess, spec, None, memory_budget=memory)
    return model_dir, spec, model


async def client_batch(
    sess: Session,
    model: Any,
    state: QueryState,
    ids: list[np.ndarray],
    masks: list[np.ndarray],
    reveal: tuple[str, ...],
    offline: bool,
    memory: float,
) -> list[dict[str, Any]]:
    """P1: one batch (request, then the queries)."""
    lens = np.array([len(m) for m in masks], dtype=np.int64)
    await send_request_with_op(sess, OP_QUERY, lens, reveal, offline)
    return await answer(sess, model, state, list(ids), masks, reveal, offline, memory)


async def send_request_with_op(
    sess: Session, op: int, lens: np.ndarray | None = None, reveal: tuple[str, ...] = (), offline: bool = False
) -> None:
    """P1 -> P0: one message, ``[op]`` followed by the request of
    :func:`secformer.models.program.send_request` (nothing more for ``close``)."""
    if op == OP_CLOSE:
        await sess.rt.transfer(1, [np.array([OP_CLOSE], dtype=np.int64)])
        return
    assert lens is not None
    await sess.rt.transfer(1, [np.array([op], dtype=np.int64), *request_arrays(lens, reveal, offline)])
