"""The dealer: correlated randomness for P0 and P1, for one session or as a long-lived service.

P0 and P1 each get a PRG key in the dealer's hello and derive their seeded fields from it; P1
then asks for the rest (the corrections) by request key, and :class:`DealerSession` answers
each key once (a repeated key would reuse a mask: refused), within the per-request and
per-query bounds of the cluster configuration.

- :func:`run_dealer` serves the one session named in ``cluster.toml`` and exits (``infer``).
- :func:`run_dealer_service` stays up and serves many sessions at once (``secformer-dealer
  --serve``, next to ``secformer serve``): P0 (the model server) and a client each connect with
  the client's session id; the dealer pairs them by that id, serves the pair, and forgets it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from netsim import resolve_profile
from secformer import material as mat
from secformer import wire
from secformer.config import ClusterConfig
from secformer.errors import ConfigError, ProtocolError, SecformerError
from secformer.link import Link, party_name
from secformer.mesh import Acceptor, Arrival, Listener, answer_status
from secformer.node import AGREE, _check_same, _log_links, _prepare_process, tls_contexts
from secformer.prg import PRG, new_key

log = logging.getLogger("secformer.dealer")


class DealerSession:
    """Answer one session's material requests (P1's; P0 derives all of its share from its key)."""

    def __init__(
        self,
        cfg: ClusterConfig,
        session: str,
        keys: dict[int, bytes],
        links: dict[int, Link],
        mask_memory: float = mat.PRESPLIT_MEMORY,
    ) -> None:
        self.cfg, self.session, self.links = cfg, session, links
        self.prgs = {p: PRG(k) for p, k in keys.items()}
        self.served: set[str] = set()
        # the weights' masks B kept split for the session's products (beyond: regenerated per use)
        self.dctx = mat.DealerContext(self.prgs[0], self.prgs[1], {}, budget=mask_memory)
        self.stats: dict[str, Any] = {"requests": 0, "elements": 0, "gen_time": 0.0}
        self.per_query: dict[str, int] = {}  # bytes generated per query (key prefix "q<i>/")
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def _fail(self, exc: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_result(exc)

    def serve(self, key: str, arrays: list[Any], meta: Any) -> bool:
        """Answer P1's request ``key`` (called by the link for each message)."""
        cfg = self.cfg
        try:
            if not isinstance(meta, dict) or not isinstance(meta.get("k"), str):
                raise ProtocolError(f"request {key!r} has no material kind")
            kind = meta["k"]
            spec = mat.parse_spec(kind, meta.get("s"))  # typed: unknown or ill-typed parameters refused
            if key in self.served:
                raise ProtocolError(f"request {key!r} was already served (mask reuse refused)")
            self.served.add(key)
            t0 = time.perf_counter()
            log.debug("dealer serves %s: %s", key, spec)
            if isinstance(spec, mat.WMask):
                spec = dataclasses.replace(spec, key=key)  # the mask is the weight's, named by its key
            query = key.split("/", 1)[0]
            size = mat.request_bytes(kind, spec)
            if size <= cfg.dealer_max_request:
                self.per_query[query] = self.per_query.get(query, 0) + size
                if self.per_query[query] > cfg.dealer_max_query:
                    raise ProtocolError(
                        f"query {query!r} asked for more than {cfg.dealer_max_query / 2**30:.0f} GB of material "
                        "(max_query_gb)"
                    )
            corr = mat.dealer_generate(
                kind, spec, key, self.prgs[0], self.prgs[1], self.dctx, max_bytes=cfg.dealer_max_request
            )
            self.stats["gen_time"] += time.perf_counter() - t0
            self.stats["requests"] += 1
            fields = mat.correction_fields(kind, spec)
            self.links[1].send(key, [corr[f.name] for f in fields])
        except SecformerError as exc:
            self._fail(exc)
        except Exception as exc:  # MemoryError, a bug: the session ends cleanly for all three
            self._fail(ProtocolError(f"dealer could not serve {key!r}: {type(exc).__name__}: {exc}"))
        return True

    async def run(self) -> dict[str, Any]:
        """Serve until both parties have finished; on any failure abort both links and raise."""
        try:
            for p, ln in self.links.items():
                ln.on_failure = self._fail
                if p == 1:
                    ln.on_message = self.serve
                else:
                    ln.on_message = lambda k, a, m: (self._fail(ProtocolError("P0 sent the dealer a request")), True)[1]
                ln.start()
            both_done = asyncio.ensure_future(asyncio.gather(*(ln.finished.wait() for ln in self.links.values())))
            try:
                done, _ = await asyncio.wait({both_done, self.failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not both_done.done():
                    both_done.cancel()
                    both_done.add_done_callback(lambda f: f.cancelled() or f.exception())
            if self.failed in done:
                raise self.failed.result()
            await asyncio.gather(*(ln.close(linger=2.0) for ln in self.links.values()))
            self.stats["bytes_sent"] = {p: ln.stats.bytes_sent for p, ln in self.links.items()}
            return self.stats
        except BaseException as exc:
            self.abort(f"dealer failed: {type(exc).__name__}: {exc}")
            raise

    def abort(self, reason: str) -> None:
        for ln in self.links.values():
            ln.abort(reason)


async def run_dealer(cfg: ClusterConfig, netsim: str | None = None) -> dict[str, Any]:
    """Serve correlated randomness to P0 and P1 of ``cfg.session`` until both finish; returns statistics."""
    _prepare_process()
    profile = resolve_profile(netsim, cfg.netsim)
    sctx, _ = tls_contexts(cfg, 2)
    keys = {0: new_key(), 1: new_key()}

    def hello(peer: int) -> dict[str, Any]:
        return {"role": "dealer", "wire_version": wire.VERSION, "prg_key": keys[peer]}

    listener = Listener(2, {0, 1}, cfg.session, hello, profile, cfg.max_frame, sctx, min(10.0, cfg.connect_timeout))
    log.info("dealer serving session %r", cfg.session, extra={"event": "start"})
    await listener.start(cfg.binds[2], cfg.endpoints[2].port)
    links: dict[int, Link] = {}
    try:
        got = await listener.wait(cfg.connect_timeout)
        links = {p: ln for p, (ln, _) in got.items()}
        info = {p: inf for p, (_, inf) in got.items()}
        for p in (0, 1):
            if info[p].get("role") != "party":
                raise ConfigError(f"{party_name(p)} did not present itself as a party")
        _check_same(info[0], info[1], 1, AGREE)
        _log_links(2, list(links.values()))
        stats = await DealerSession(cfg, cfg.session, keys, links).run()
        log.info(
            "dealer finished: %d requests, generation %.3f s",
            stats["requests"],
            stats["gen_time"],
            extra={"event": "finish"},
        )
        return stats
    except BaseException as exc:
        reason = f"dealer failed: {type(exc).__name__}: {exc}"
        log.error(reason, extra={"event": "abort"})
        for ln in links.values():
            ln.abort(reason)
        raise
    finally:
        listener.close()


def short_id(session: str) -> str:
    """A session's name in logs and status: enough to tell sessions apart, not to join one."""
    import hashlib

    return hashlib.sha256(session.encode()).hexdigest()[:10]


class DealerService:
    """Many sessions at once: pairs P0's and a client's connection by session id (see the module doc).

    A session whose other party does not connect within ``connect_timeout`` is dropped with a
    message to the one that came; at most ``max_sessions`` run or wait at once (more are refused
    with a reason). SIGTERM (:meth:`drain`) refuses new sessions and exits when the running ones end.
    """

    def __init__(
        self, cfg: ClusterConfig, netsim: str | None = None, max_sessions: int = 16, memory: float = 48e9
    ) -> None:
        self.cfg, self.max_sessions = cfg, max_sessions
        # each session may keep its weights' masks within an equal share (at most PRESPLIT_MEMORY)
        self.mask_memory = min(mat.PRESPLIT_MEMORY, memory / max(1, max_sessions))
        self.profile = resolve_profile(netsim, cfg.netsim)
        self.sctx, _ = tls_contexts(cfg, 2)
        self.pending: dict[str, dict[str, Any]] = {}  # session -> keys, arrived links, info, timer
        self.running: dict[str, DealerSession] = {}
        self.started = time.time()
        self.counts = {"sessions": 0, "failed": 0, "refused": 0, "requests": 0}
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.acceptor: Acceptor | None = None

    async def start(self) -> int:
        _prepare_process()
        self.acceptor = Acceptor(
            2, {"party0", "party1", "dealer"}, self._arrival, self.sctx, min(10.0, self.cfg.connect_timeout)
        )
        port = await self.acceptor.start(self.cfg.binds[2], self.cfg.endpoints[2].port)
        log.info(
            "dealer service listening on port %d (at most %d sessions)",
            port,
            self.max_sessions,
            extra={"event": "start"},
        )
        return port

    def status(self) -> dict[str, Any]:
        return {
            "role": "dealer",
            "uptime_s": round(time.time() - self.started, 1),
            "draining": self.draining,
            "running": {
                short_id(s): {"requests": d.stats["requests"], "gen_time_s": round(d.stats["gen_time"], 3)}
                for s, d in self.running.items()
            },
            "waiting": len(self.pending),
            **self.counts,
        }

    async def _arrival(self, a: Arrival) -> None:
        if a.info.get("request") == "status":
            await answer_status(a, 2, self.status(), (None, "party0", "dealer"))
            return
        sid, p = a.session, a.sender
        reason = None
        if self.draining:
            reason = "the dealer is shutting down and takes no new sessions"
        elif p not in (0, 1) or a.info.get("role") != "party":
            reason = f"{party_name(p)} is not a computing party"
        elif sid in self.running or p in self.pending.get(sid, {}).get("links", {}):
            reason = f"{party_name(p)} of this session is already connected"
        elif sid not in self.pending and len(self.running) + len(self.pending) >= self.max_sessions:
            reason = f"the dealer is full ({self.max_sessions} sessions); try again later"
        if reason is not None:
            self.counts["refused"] += 1
            log.warning(
                "refused %s of session %s: %s",
                party_name(p),
                short_id(sid),
                reason,
                extra={"event": "refused", "session": short_id(sid)},
            )
            a.refuse(2, reason)
            return
        entry = self.pending.get(sid)
        if entry is None:
            entry = {"keys": {0: new_key(), 1: new_key()}, "links": {}, "info": {}}
            entry["timer"] = asyncio.get_running_loop().call_later(self.cfg.connect_timeout, self._expire, sid)
            self.pending[sid] = entry
            self.idle.clear()
        link = a.link(2, self.profile, self.cfg.max_frame)
        entry["links"][p], entry["info"][p] = link, a.info
        await link.send_hello({"role": "dealer", "wire_version": wire.VERSION, "prg_key": entry["keys"][p]})
        if len(entry["links"]) == 2 and self.pending.get(sid) is entry:
            del self.pending[sid]
            entry["timer"].cancel()
            asyncio.get_running_loop().create_task(self._run(sid, entry))

    def _expire(self, sid: str) -> None:
        entry = self.pending.pop(sid, None)
        if entry is None:
            return
        for p, ln in entry["links"].items():
            log.warning(
                "session %s: %s came, %s did not within %g s",
                short_id(sid),
                party_name(p),
                party_name(1 - p),
                self.cfg.connect_timeout,
                extra={"session": short_id(sid)},
            )
            ln.abort(
                f"{party_name(1 - p)} of this session did not reach the dealer within {self.cfg.connect_timeout:g} s"
            )
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.running and not self.pending:
            self.idle.set()

    async def _run(self, sid: str, entry: dict[str, Any]) -> None:
        links, info = entry["links"], entry["info"]
        ds = DealerSession(self.cfg, sid, entry["keys"], links, self.mask_memory)
        self.running[sid] = ds
        self.counts["sessions"] += 1
        t0 = time.perf_counter()
        try:
            _check_same(info[0], info[1], 1, AGREE)
            log.info("session %s: serving", short_id(sid), extra={"event": "session", "session": short_id(sid)})
            stats = await ds.run()
            log.info(
                "session %s: finished, %d requests, generation %.3f s, %.1f s",
                short_id(sid),
                stats["requests"],
                stats["gen_time"],
                time.perf_counter() - t0,
                extra={"event": "session_end", "session": short_id(sid)},
            )
        except Exception as exc:
            self.counts["failed"] += 1
            ds.abort(f"dealer: {exc}")
            log.warning(
                "session %s ended: %s: %s",
                short_id(sid),
                type(exc).__name__,
                exc,
                extra={"event": "session_failed", "session": short_id(sid)},
            )
        finally:
            self.counts["requests"] += ds.stats["requests"]
            self.running.pop(sid, None)
            self._check_idle()

    async def drain(self, timeout: float) -> None:
        """Refuse new sessions, let running ones finish (at most ``timeout`` s, then abort them)."""
        self.draining = True
        for sid in list(self.pending):
            entry = self.pending.pop(sid)
            entry["timer"].cancel()
            for ln in entry["links"].values():
                ln.abort("the dealer is shutting down")
        self._check_idle()
        log.info("draining: %d sessions running", len(self.running), extra={"event": "drain"})
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            for ds in list(self.running.values()):
                ds.abort(f"the dealer is shutting down (sessions still running after {timeout:g} s)")
            await asyncio.sleep(0.1)

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()


async def run_dealer_service(
    cfg: ClusterConfig,
    netsim: str | None = None,
    max_sessions: int = 16,
    drain_timeout: float = 600.0,
    stop: asyncio.Event | None = None,
    memory: float = 48e9,
) -> dict[str, Any]:
    """Serve sessions until ``stop`` is set (SIGTERM/SIGINT when run by ``secformer-dealer --serve``),
    then drain. Returns the service's counts."""
    svc = DealerService(cfg, netsim, max_sessions, memory)
    await svc.start()
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
        svc.acceptor.close() if svc.acceptor else None
        await svc.drain(drain_timeout)
    finally:
        svc.close()
    log.info("dealer service stopped: %d sessions served", svc.counts["sessions"], extra={"event": "finish"})
    return svc.status()
