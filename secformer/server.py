"""The model server: P0 as a long-lived service answering many clients (``secformer serve``).

The server loads the model's plaintext weights once and listens on P0's endpoint of
``cluster.toml``. Each client (P1, its own certificate from the cluster CA) opens a session:

    client -> server   hello: session id (the client's, random), wire version, fixed point,
                       optionally the mode and model fingerprint it expects
    server -> client   hello: PRG key of the pair, model fingerprint, mode, limits  (or a refusal)
    both   -> dealer   connect with the session id; the dealer pairs them (:mod:`secformer.dealer`)

then the session program of :mod:`secformer.serving` runs until the client closes. Sessions are
independent: one that fails (a client that crashes, stalls, or sends garbage) ends alone and is
logged. Limits: ``max_sessions`` at once (more are refused with the reason), queries per session,
texts per batch, tokens per text, material held ahead per session (``session_memory``), idle
time between batches. SIGTERM drains: no new sessions, running batches finish, idle sessions end
with a message, then exit 0. ``secformer status`` asks for :meth:`ModelServer.status`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import numpy as np

from netsim import resolve_profile
from secformer import wire
from secformer.config import ClusterConfig
from secformer.dealer import short_id
from secformer.errors import ConfigError
from secformer.fixedpoint import FixedPoint
from secformer.link import Link
from secformer.mesh import Acceptor, Arrival, answer_status, open_link
from secformer.models import MODES
from secformer.node import _prepare_process, start_session, tls_contexts, until_failure
from secformer.prg import new_key
from secformer.runtime import set_prefix
from secformer.serving import DrainedError, SessionControl, owner_session, pack_public, program_identity

log = logging.getLogger("secformer.server")
SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{16,200}")


class ModelServer:
    """P0 of many sessions (see the module doc)."""

    def __init__(
        self,
        cfg: ClusterConfig,
        model_dir: str,
        mode: str | None = None,
        netsim: str | None = None,
        max_sessions: int = 4,
        session_memory: float = 2e9,
        max_queries: int = 1000,
        max_batch: int = 64,
        max_len: int | None = None,
        idle_timeout: float = 600.0,
        unsafe_reveal: tuple[str, ...] = (),
        client_quota: int = 0,
    ) -> None:
        from secformer.models.hf import load_spec, model_mode

        self.cfg, self.model_dir = cfg, str(model_dir)
        self.spec = load_spec(self.model_dir)
        self.mode = mode or model_mode(self.model_dir) or "secformer"
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if max_sessions < 1:
            raise ConfigError("max_sessions must be at least 1")
        self.profile = resolve_profile(netsim, cfg.netsim)
        self.sctx, self.cctx = tls_contexts(cfg, 0)
        self.max_sessions = max_sessions
        self.limits = {
            "max_queries": max_queries,
            "max_batch": max_batch,
            "max_len": min(max_len or self.spec.max_pos, self.spec.max_pos),
            "session_memory": session_memory,
            "idle_timeout": idle_timeout,
        }
        self.unsafe_reveal = tuple(unsafe_reveal)
        # queries per client certificate over the server's life (0: no bound): a new session does
        # not reset what a client has already learned about the model
        self.client_quota = client_quota
        self.served: dict[str, int] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.public = np.zeros(0, dtype=np.uint8)
        self.limbs: dict[str, Any] = {}  # P0's encoded weights, shared by all sessions
        self.sessions: dict[str, dict[str, Any]] = {}
        self.totals = {
            "sessions": 0,
            "ended": 0,
            "failed": 0,
            "refused": 0,
            "queries": 0,
            "bytes_sent": 0,
            "bytes_recv": 0,
        }
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.started = time.time()
        self.acceptor: Acceptor | None = None
        self.fx = FixedPoint(cfg.frac_bits)
        self.name, self.digest = program_identity()

    async def start(self) -> int:
        """Load the weights and listen; returns the port."""
        from secformer.models.hf import load_weights

        _prepare_process()
        t0 = time.perf_counter()
        # plaintext, as loaded: each session's load_model folds 1/sqrt(d) into its own copy of the
        # query weights (new arrays; these stay as they are)
        self.weights = load_weights(self.model_dir, self.spec)[1]
        self.public = pack_public(self.model_dir)
        self.acceptor = Acceptor(
            0, {"party1", "party0", "dealer"}, self._arrival, self.sctx, min(10.0, self.cfg.connect_timeout)
        )
        port = await self.acceptor.start(self.cfg.binds[0], self.cfg.endpoints[0].port)
        log.info(
            "serving %s (%s, %d layers, fingerprint %s) in mode %s on port %d; loaded in %.1f s; at most %d sessions",
            self.model_dir,
            self.spec.arch,
            self.spec.layers,
            self.spec.fingerprint(),
            self.mode,
            port,
            time.perf_counter() - t0,
            self.max_sessions,
            extra={"event": "start"},
        )
        return port

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        now = time.time()
        sessions = []
        for sid, s in self.sessions.items():
            ctl: SessionControl = s["ctl"]
            link: Link | None = s.get("link")
            lat = sorted(ctl.latencies)
            sessions.append(
                {
                    "id": short_id(sid),
                    "client": s["client"],
                    "state": ctl.state,
                    "age_s": round(now - s["started"], 1),
                    "queries": ctl.queries,
                    "batches": ctl.batches,
                    "load_time_s": round(ctl.load_time, 3),
                    "median_query_s": round(lat[len(lat) // 2], 3) if lat else None,
                    "bytes_sent": link.stats.bytes_sent if link else 0,
                    "bytes_recv": link.stats.bytes_recv if link else 0,
                }
            )
        return {
            "role": "server",
            "model": {
                "dir": self.model_dir,
                "fingerprint": self.spec.fingerprint(),
                "arch": self.spec.arch,
                "layers": self.spec.layers,
                "hidden": self.spec.hidden,
                "head": self.spec.head,
            },
            "mode": self.mode,
            "uptime_s": round(now - self.started, 1),
            "draining": self.draining,
            "max_sessions": self.max_sessions,
            "limits": {**self.limits, "client_quota": self.client_quota},
            "sessions": sessions,
            "totals": dict(self.totals),
        }

    # ------------------------------------------------------------------ sessions
    def _refusal(self, a: Arrival) -> str | None:
        info, sid = a.info, a.session
        if self.draining:
            return "the model server is shutting down and takes no new sessions"
        if a.sender != 1 or info.get("role") != "client":
            return "only clients (P1) open sessions with a model server"
        if info.get("wire_version") != wire.VERSION:
            return f"wire version {info.get('wire_version')!r} differs from the server's {wire.VERSION}"
        if info.get("frac_bits") != self.cfg.frac_bits:
            return f"fixed point: {info.get('frac_bits')!r} fractional bits, the server uses {self.cfg.frac_bits}"
        if info.get("program_hash") not in (None, self.digest):
            return "the client runs another version of secformer's session program; install the same version"
        if info.get("mode") and info["mode"] != self.mode:
            return f"the client asks for mode {info['mode']!r}; this server runs {self.mode!r}"
        if info.get("model") and info["model"] != self.spec.fingerprint():
            return f"the client expects model {info['model']!r}; this server serves {self.spec.fingerprint()!r}"
        if not SESSION_ID.fullmatch(sid):
            return "session ids are 16-200 characters of [A-Za-z0-9._:-]"
        if sid in self.sessions:
            return "this session id is already in use"
        if len(self.sessions) >= self.max_sessions:
            return f"the server is full ({self.max_sessions} sessions); try again later"
        if self.client_quota and self.served.get(self._client(a), 0) >= self.client_quota:
            return f"this client has had its {self.client_quota} queries (the server's client quota)"
        return None

    @staticmethod
    def _client(a: Arrival) -> str:
        """The client's name: its certificate's (``keygen --client``), else its address."""
        return a.cert.name or str(a.addr[0] if isinstance(a.addr, tuple) else a.addr)

    async def _arrival(self, a: Arrival) -> None:
        if a.info.get("request") == "status":
            await answer_status(a, 0, self.status(), (None, "party0", "dealer"))
            return
        reason = self._refusal(a)
        if reason is not None:
            self.totals["refused"] += 1
            log.warning(
                "refused a session from %s (%s): %s",
                a.cert.name or a.addr,
                short_id(a.session),
                reason,
                extra={"event": "refused", "session": short_id(a.session)},
            )
            a.refuse(0, reason)
            return
        sid = a.session
        ctl = SessionControl(
            max_queries=int(self.limits["max_queries"]),
            max_len=int(self.limits["max_len"]),
            max_batch=int(self.limits["max_batch"]),
            offline_memory=float(self.limits["session_memory"]),
            idle_timeout=float(self.limits["idle_timeout"]),
            unsafe_reveal=self.unsafe_reveal,
            client=self._client(a),
            quota=self.client_quota,
            account=self.served,
        )
        entry = {
            "ctl": ctl,
            "client": ctl.client,
            "started": time.time(),
            "task": None,
            "links": [],
        }
        self.sessions[sid] = entry  # before any await: the slot is taken
        self.idle.clear()
        self.totals["sessions"] += 1
        entry["task"] = asyncio.get_running_loop().create_task(self._session(a, entry))

    async def _session(self, a: Arrival, entry: dict[str, Any]) -> None:
        sid, ctl, cfg = a.session, entry["ctl"], self.cfg
        extra = {"session": short_id(sid), "client": entry["client"]}
        links: list[Link] = entry["links"]
        t0 = time.perf_counter()
        try:
            plink = a.link(0, self.profile, cfg.max_frame)
            links.append(plink)
            entry["link"] = plink
            pair_key = new_key()
            fp = self.spec.fingerprint()
            await plink.send_hello(
                {
                    "role": "server",
                    "pair_key": pair_key,
                    "model": fp,
                    "mode": self.mode,
                    "arch": self.spec.arch,
                    "head": self.spec.head,
                    "program": self.name,
                    "program_hash": self.digest,
                    "frac_bits": cfg.frac_bits,
                    "netsim": self.profile.name,
                    **self.limits,
                }
            )
            log.info("session %s opened by %s", short_id(sid), entry["client"], extra={"event": "session", **extra})
            hello = {
                "role": "party",
                "program": self.name,
                "program_hash": self.digest,
                "frac_bits": cfg.frac_bits,
                "wire_version": wire.VERSION,
                "netsim": self.profile.name,
                "agree": {"model configuration": fp, "approximation mode": self.mode},
            }
            try:
                dlink, dinfo = await open_link(
                    0, 2, cfg.endpoints[2], sid, hello, cfg.connect_timeout, self.profile, cfg.max_frame, self.cctx
                )
            except Exception as exc:
                raise ConfigError(f"the model server cannot reach its dealer: {exc}") from None
            links.append(dlink)
            sess, failed = start_session(0, cfg, self.fx, plink, dlink, dinfo.get("prg_key"), pair_key)
            set_prefix("m/")
            await until_failure(
                owner_session(sess, self.spec, self.mode, self.weights, self.public, self.limbs, ctl), failed
            )
            await asyncio.gather(*(ln.close(linger=2.0) for ln in links))
            self.totals["ended"] += 1
            log.info(
                "session %s closed by the client: %d queries in %d batches, %.1f s",
                short_id(sid),
                ctl.queries,
                ctl.batches,
                time.perf_counter() - t0,
                extra={"event": "session_end", **extra},
            )
        except DrainedError as exc:  # after a batch: the client has all of it; say why we end
            self._drained(sid, ctl, extra)
            await asyncio.gather(*(ln.close(linger=2.0, reason=str(exc)) for ln in links))
        except Exception as exc:
            if ctl.draining:
                self._drained(sid, ctl, extra)
                reason = "the model server is shutting down (drain): open a new session later"
            else:
                self.totals["failed"] += 1
                reason = f"the model server ended the session: {type(exc).__name__}: {exc}"
                log.warning(
                    "session %s ended: %s: %s",
                    short_id(sid),
                    type(exc).__name__,
                    exc,
                    extra={"event": "session_failed", **extra},
                )
            for ln in links:
                ln.abort(reason)
        finally:
            self.totals["queries"] += ctl.queries
            for ln in links[:1]:
                self.totals["bytes_sent"] += ln.stats.bytes_sent
                self.totals["bytes_recv"] += ln.stats.bytes_recv
            self.sessions.pop(sid, None)
            if not self.sessions:
                self.idle.set()

    def _drained(self, sid: str, ctl: SessionControl, extra: dict[str, Any]) -> None:
        self.totals["ended"] += 1
        log.info(
            "session %s ended by the drain after %d queries",
            short_id(sid),
            ctl.queries,
            extra={"event": "session_end", **extra},
        )

    # ------------------------------------------------------------------ shutdown
    async def drain(self, timeout: float) -> None:
        """Refuse new sessions; end idle ones now and the others after their running batch
        (at most ``timeout`` s, then abort them)."""
        self.draining = True  # still listening: a new client is told why it is refused
        log.info("draining: %d sessions open", len(self.sessions), extra={"event": "drain"})
        for s in list(self.sessions.values()):
            s["ctl"].draining = True
            if s["ctl"].state in ("idle", "handshake", "loading"):
                for ln in s["links"]:
                    ln.abort("the model server is shutting down (drain): open a new session later")
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            for s in list(self.sessions.values()):
                for ln in s["links"]:
                    ln.abort(f"the model server is shutting down (batch still running after {timeout:g} s)")
            await asyncio.sleep(0.2)

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
        for s in list(self.sessions.values()):
            if s["task"] is not None:
                s["task"].cancel()


async def run_server(server: ModelServer, stop: asyncio.Event, drain_timeout: float = 600.0) -> dict[str, Any]:
    """Start ``server``, serve until ``stop`` is set, drain, and return its final status."""
    await server.start()
    try:
        await stop.wait()
        await server.drain(drain_timeout)
    finally:
        server.close()
    st = server.status()
    log.info(
        "server stopped: %d sessions, %d queries",
        st["totals"]["sessions"],
        st["totals"]["queries"],
        extra={"event": "finish"},
    )
    return st
