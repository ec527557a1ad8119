"""The client of a model server (``secformer serve``): P1 of one session, as a Python object.

    from secformer.client import Client

    with Client("cluster.toml") as c:              # server and dealer from the file, or
        # Client("client.toml", server="10.0.0.1:7400", dealer="10.0.0.3:7402")
        vecs = c.embed(["A man is eating food."])   # (1, hidden) float64
        labels = c.classify(["..."])               # classifier models: label ids
        tok, text = c.generate_next("The cat")     # GPT-2: the next token, privately argmax'ed

Connecting opens a session: the server sends the model's public files (config and tokenizer;
cached under ``~/.cache/secformer/models``) and masks its weights for this session (once; every
later query of the session reuses it). Each call is one batch; results are those of
``secformer infer`` (:func:`query` returns its per-text dicts, :mod:`secformer.results` writes
them). The server's refusal or any failure raises :class:`~secformer.errors.SecformerError`
with the reason; after a failure the session is over (:class:`SessionClosedError`), open a new
client. :class:`AsyncClient` is the same for asyncio programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from netsim import resolve_profile
from secformer import wire
from secformer.config import ClusterConfig
from secformer.errors import ConfigError, PeerError, ProtocolError, SecformerError
from secformer.fixedpoint import FixedPoint
from secformer.link import Link
from secformer.material import PRESPLIT_MEMORY
from secformer.mesh import Endpoint, open_link
from secformer.models.outputs import check_request, task_results
from secformer.node import _prepare_process, start_session, tls_contexts, until_failure
from secformer.runtime import set_prefix
from secformer.serving import OP_CLOSE, client_batch, client_open, program_identity, send_request_with_op

DEFAULT_OFFLINE_MEMORY = 2e9


class SessionClosedError(PeerError):
    """The session has ended (closed, or failed earlier: the message names the first failure)."""


def parse_endpoint(text: str, what: str) -> Endpoint:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must look like HOST:PORT, got {text!r}")
    return Endpoint(host.strip("[]"), int(port))


def models_dir() -> Path:
    base = os.environ.get("SECFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "secformer"
    )
    return Path(base) / "models"


class AsyncClient:
    """One session with a model server (see the module doc); use ``async with``."""

    def __init__(
        self,
        config: ClusterConfig | str | Path,
        server: str | None = None,
        dealer: str | None = None,
        *,
        mode: str | None = None,
        model: str | None = None,
        netsim: str | None = None,
        insecure: bool = False,
        offline: bool = False,
        offline_memory: float = DEFAULT_OFFLINE_MEMORY,
        max_len: int = 128,
        cache_dir: str | Path | None = None,
        weights_memory: float = PRESPLIT_MEMORY,
    ) -> None:
        self.cfg = config if isinstance(config, ClusterConfig) else ClusterConfig.load(config)
        self.cfg.insecure = self.cfg.insecure or insecure
        self.server = parse_endpoint(server, "--server") if server else self.cfg.endpoints[0]
        self.dealer = parse_endpoint(dealer, "--dealer") if dealer else self.cfg.endpoints[2]
        self.mode, self.model_fp = mode, model
        self.profile = resolve_profile(netsim, self.cfg.netsim)
        self.offline, self.offline_memory, self.max_len = offline, offline_memory, max_len
        self.weights_memory = weights_memory  # bytes of the masked weights kept pre-split (faster)
        self.cache = Path(cache_dir) if cache_dir else models_dir()
        self.info: dict[str, Any] = {}  # the server's hello: model fingerprint, mode, limits
        self.spec: Any = None
        self.model_dir: Path | None = None
        self.session = f"{self.cfg.session}-{secrets.token_hex(16)}"
        self.load_time = 0.0  # seconds from the handshake to the masked model (the session's set-up)
        self._links: list[Link] = []
        self._jobs: asyncio.Queue[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], asyncio.Future[Any]] | None]
        self._worker: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._tok: Any = None

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ session
    async def connect(self) -> AsyncClient:
        """Open the session: handshake with the server and the dealer, receive the model's public
        files, take part in the masking of its weights. Returns self."""
        _prepare_process()
        cfg = self.cfg
        _, cctx = tls_contexts(cfg, 1)
        name, digest = program_identity()
        hello = {
            "role": "client",
            "wire_version": wire.VERSION,
            "frac_bits": cfg.frac_bits,
            "program": name,
            "program_hash": digest,
            "netsim": self.profile.name,
            "mode": self.mode or "",
            "model": self.model_fp or "",
        }
        plink, info = await open_link(
            1, 0, self.server, self.session, hello, cfg.connect_timeout, self.profile, cfg.max_frame, cctx
        )
        self._links.append(plink)
        try:
            self.info = info
            from secformer.models import MODES

            if not isinstance(info.get("pair_key"), bytes) or info.get("mode") not in MODES:
                raise ProtocolError("the server's hello is malformed")
            dhello = {
                "role": "party",
                "program": name,
                "program_hash": digest,
                "frac_bits": cfg.frac_bits,
                "wire_version": wire.VERSION,
                "netsim": self.profile.name,
                "agree": {"model configuration": info.get("model"), "approximation mode": info.get("mode")},
            }
            dlink, dinfo = await open_link(
                1, 2, self.dealer, self.session, dhello, cfg.connect_timeout, self.profile, cfg.max_frame, cctx
            )
            self._links.append(dlink)
            sess, failed = start_session(
                1, cfg, FixedPoint(cfg.frac_bits), plink, dlink, dinfo.get("prg_key"), info["pair_key"]
            )
        except BaseException as exc:
            for ln in self._links:
                ln.abort(f"client failed: {exc}")
            raise
        self._jobs = asyncio.Queue()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._worker = asyncio.get_running_loop().create_task(self._work(sess, failed, ready))
        await ready
        return self

    async def _work(self, sess: Any, failed: asyncio.Future[BaseException], ready: asyncio.Future[None]) -> None:
        """The session's one task: every message of the session is keyed in its context, in order."""
        set_prefix("m/")
        job: Any = None
        try:
            t0 = asyncio.get_running_loop().time()
            self.model_dir, self.spec, model = await until_failure(
                client_open(sess, self.cache, self.weights_memory), failed
            )
            if self.model_fp and self.spec.fingerprint() != self.model_fp:
                raise ProtocolError(f"the server sent model {self.spec.fingerprint()}, expected {self.model_fp}")
            if self.spec.fingerprint() != self.info.get("model"):
                raise ProtocolError("the server's model files do not match the fingerprint of its hello")
            from secformer.models.hf import load_tokenizer
            from secformer.models.program import QueryState

            state = QueryState(self.spec, str(self.info["mode"]))
            self.load_time = asyncio.get_running_loop().time() - t0
            self._tok = load_tokenizer(self.model_dir)  # now, not in the first query's time
            ready.set_result(None)
            while True:
                job = await self._jobs.get()
                if job is None:
                    await until_failure(send_request_with_op(sess, OP_CLOSE), failed)
                    await asyncio.gather(*(ln.close(linger=5.0) for ln in self._links))
                    self._error = SessionClosedError("the session is closed")
                    return
                fn, args, fut = job
                result = await until_failure(fn(sess, model, state, *args), failed)
                if not fut.done():
                    fut.set_result(result)
                job = None
        except BaseException as exc:
            self._error = exc
            for ln in self._links:
                ln.abort(f"client failed: {type(exc).__name__}: {exc}")
            for f in [ready, *([job[2]] if job else [])]:
                if not f.done():
                    f.set_exception(exc)
            while not self._jobs.empty():
                j = self._jobs.get_nowait()
                if j is not None and not j[2].done():
                    j[2].set_exception(SessionClosedError(f"the session failed: {exc}"))
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _submit(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self._error is not None:
            err = self._error
            if isinstance(err, SessionClosedError):
                raise err
            raise SessionClosedError(f"the session is over: {type(err).__name__}: {err}")
        if self._worker is None:
            raise SessionClosedError("not connected: call connect() first")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._jobs.put((fn, args, fut))
        return await fut

    async def close(self) -> None:
        """End the session (the server frees its side). Idempotent."""
        if self._worker is not None and not self._worker.done() and self._error is None:
            await self._jobs.put(None)
            with contextlib.suppress(TimeoutError, SecformerError):
                await asyncio.wait_for(asyncio.shield(self._worker), self.cfg.round_timeout)
        for ln in self._links:
            if ln.error is None and not ln.finished.is_set():
                ln.abort("client closed")

    # ------------------------------------------------------------------ queries
    def _tokenize(self, texts: list[str], max_len: int) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
        from secformer.models.hf import load_tokenizer

        if self._tok is None:
            self._tok = load_tokenizer(self.model_dir)
        ids, masks, full = [], [], []
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError("every text must be a non-empty string")
            full.append(len(self._tok(t, verbose=False)["input_ids"]))
            enc = self._tok(t, truncation=True, max_length=max_len, return_tensors="np")
            ids.append(enc["input_ids"][0].astype(np.int64))
            masks.append(enc["attention_mask"][0].astype(np.int64))
        return ids, masks, full

    async def query(
        self, texts: list[str], reveal: str | list[str] | None = None, max_len: int | None = None
    ) -> list[dict[str, Any]]:
        """Private inference of ``texts`` (one batch). Each result is ``{"outputs": {name: array},
        "stats": {...}, "tokens": n}`` as ``secformer infer`` gives (see :mod:`secformer.results`)."""
        if self.spec is None:
            raise SessionClosedError("not connected: call connect() first")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return []
        limit = int(self.info.get("max_batch", 64))
        if len(texts) > limit:
            out: list[dict[str, Any]] = []
            for i in range(0, len(texts), limit):
                out += await self.query(texts[i : i + limit], reveal, max_len)
            return out
        names = [reveal] if isinstance(reveal, str) else list(reveal or [])
        names = [n.strip() for x in names for n in x.split(",") if n.strip()]
        req = check_request(self.spec, names or task_results(self.spec)[:1], unsafe=names)
        L = min(max_len or self.max_len, int(self.info.get("max_len", self.spec.max_pos)))
        ids, masks, full = self._tokenize(texts, L)
        res = await self._submit(client_batch, ids, masks, req, self.offline, self.offline_memory)
        for r, n in zip(res, full, strict=True):
            r["tokens"] = n
        return res

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Sentence embeddings, shape (n, hidden), for models without a classifier or LM head."""
        if "embedding" not in task_results(self.spec):
            raise ValueError(
                f"this model's head is {self.spec.head!r}: it gives {task_results(self.spec)}, not embeddings"
            )
        return np.stack(
            [np.asarray(r["outputs"]["embedding"]).reshape(-1) for r in await self.query(texts, "embedding")]
        )

    async def classify(self, texts: list[str], logits: bool = False) -> np.ndarray:
        """Label ids (int64, shape (n,)), computed by a private argmax, so nothing else is revealed;
        ``logits=True`` reveals the logits instead, shape (n, classes)."""
        if self.spec.head != "classifier":
            raise ValueError(f"this model's head is {self.spec.head!r}, not a classifier")
        name = "logits" if logits else "label"
        res = await self.query(texts, name)
        if logits:
            return np.stack([np.asarray(r["outputs"]["logits"]).reshape(-1) for r in res])
        return np.array([int(np.asarray(r["outputs"]["label"]).ravel()[0]) for r in res], dtype=np.int64)

    def label_names(self) -> dict[int, str]:
        """The classifier's label names from its public config (``id2label``)."""
        import json

        cfg = json.loads((Path(self.model_dir) / "config.json").read_text()) if self.model_dir else {}
        return {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}

    async def generate_next(self, text: str) -> tuple[int, str]:
        """The next token of a language model (GPT-2): its id and text, by a private argmax."""
        if self.spec.head != "lm":
            raise ValueError(f"this model's head is {self.spec.head!r}, not a language model")
        (r,) = await self.query([text], "token")
        tok = int(np.asarray(r["outputs"]["token"]).ravel()[0])
        return tok, self._tok.decode([tok])


class Client:
    """:class:`AsyncClient` for ordinary (synchronous) programs: runs its own event loop in a
    background thread. Same arguments; use ``with``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        try:
            import uvloop

            self._loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="secformer-client", daemon=True)
        self._thread.start()
        self._c = AsyncClient(*args, **kw)
        try:
            self._call(self._c.connect())
        except BaseException:
            self._stop()
            raise

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def spec(self) -> Any:
        return self._c.spec

    @property
    def info(self) -> dict[str, Any]:
        return self._c.info

    @property
    def load_time(self) -> float:
        return self._c.load_time

    def query(
        self, texts: list[str], reveal: str | list[str] | None = None, max_len: int | None = None
    ) -> list[dict[str, Any]]:
        return self._call(self._c.query(texts, reveal, max_len))

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._call(self._c.embed(texts))

    def classify(self, texts: list[str], logits: bool = False) -> np.ndarray:
        return self._call(self._c.classify(texts, logits))

    def label_names(self) -> dict[int, str]:
        return self._c.label_names()

    def generate_next(self, text: str) -> tuple[int, str]:
        return self._call(self._c.generate_next(text))

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._c.close())
            finally:
                self._stop()
