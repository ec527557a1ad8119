"""Run one role of a session: a computing party (P0, P1) or the dealer.

Topology: the lower id connects to the higher (P0 -> P1, P0 -> dealer, P1 -> dealer).
Links are mutual TLS (:mod:`secformer.tls`), each end checking the other's role; plaintext
TCP only when the configuration says ``insecure`` (``--insecure``), with a warning.
Handshake (hello frames): each side states session, role, program name and hash, fixed-point
format, wire version and the program's own agreement fields (e.g. the model configuration's
hash, see :func:`handshake_fields`); any disagreement aborts all three with a message naming
it. The dealer gives each party the PRG key for its seeded material; P0 gives P1 the pairwise
input key (inside TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from netsim import Profile, resolve_profile
from secformer import wire
from secformer.config import ClusterConfig
from secformer.errors import ConfigError, PeerError
from secformer.fixedpoint import FixedPoint
from secformer.link import Link, party_name
from secformer.mesh import Listener, open_link
from secformer.prg import PRG, new_key
from secformer.provider import DealerProvider
from secformer.runtime import Runtime, set_prefix
from secformer.session import Session
from secformer.tls import client_context, server_context

log = logging.getLogger("secformer.node")

Program = Callable[[Session, dict[str, Any]], Awaitable[Any]]


def program_fingerprint(program: Program) -> tuple[str, str]:
    """(qualified name, hash of its source): both parties must run the same program."""
    name = f"{getattr(program, '__module__', '?')}:{getattr(program, '__qualname__', repr(program))}"
    try:
        src = inspect.getsource(program)
    except (OSError, TypeError):
        src = name
    return name, hashlib.sha256(src.encode()).hexdigest()[:32]


@dataclass
class PartyResult:
    party: int
    output: Any
    stats: dict[str, Any]
    profile: Profile
    plan: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


def _check_same(mine: dict[str, Any], theirs: dict[str, Any], peer: int, keys: tuple[str, ...]) -> None:
    for k in keys:
        a, b = mine.get(k), theirs.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            for f in sorted(set(a) | set(b)):
                if a.get(f) != b.get(f):
                    raise ConfigError(
                        f"handshake with {party_name(peer)}: {f} differs (ours {a.get(f)!r}, theirs {b.get(f)!r})"
                    )
        elif a != b:
            raise ConfigError(
                f"handshake with {party_name(peer)}: {k} differs (ours {mine.get(k)!r}, theirs {theirs.get(k)!r})"
            )


AGREE = ("program", "program_hash", "frac_bits", "wire_version", "agree")
INSECURE_WARNING = (
    "INSECURE MODE: links are plaintext TCP with no peer authentication; PRG keys, shares and "
    "revealed outputs travel in the clear and anyone who reaches the ports can join. "
    "Use only for local tests on a trusted machine."
)


def handshake_fields(program: Program, inputs: dict[str, Any]) -> dict[str, str]:
    """Fields both parties must agree on before any round: ``program.handshake(inputs)`` if the
    program defines it (e.g. a hash of the model configuration), else nothing."""
    fn = getattr(program, "handshake", None)
    if fn is None:
        return {}
    fields = fn(inputs)
    if not isinstance(fields, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise ConfigError(f"{program!r}.handshake must return a dict of strings")
    return fields


def tls_contexts(cfg: ClusterConfig, me: int) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(listening, connecting) TLS contexts of role ``me``; (None, None) in insecure mode."""
    if cfg.tls is None:
        if not cfg.insecure:
            raise ConfigError(
                "the cluster config has no [tls] section: run `secformer keygen DIR --config FILE` to create "
                "certificates, or pass --insecure to use plaintext TCP on a trusted local machine"
            )
        log.warning(INSECURE_WARNING, extra={"event": "insecure"})
        return None, None
    return server_context(cfg.tls, me), client_context(cfg.tls, me)


def _log_links(me: int, links: list[Link]) -> None:
    for ln in links:
        log.info(
            "%s connected to %s over %s",
            party_name(me),
            party_name(ln.peer),
            ln.security,
            extra={"event": "link", "peer": party_name(ln.peer)},
        )


_PREPARED = False


def _prepare_process() -> None:
    """Once per process: keep freed blocks in the heap (page faults cost as much as the
    arithmetic on this kind of VM), ordinary pages for numpy's arrays (huge ones stall in the
    kernel's compaction) and load the Numba kernels before any timing."""
    global _PREPARED
    if not _PREPARED:
        from secformer.ring import no_huge_pages, tune_malloc, warmup

        tune_malloc()
        no_huge_pages()
        warmup()
        _PREPARED = True


def start_session(
    party: int, cfg: ClusterConfig, fx: FixedPoint, plink: Link, dlink: Link, dkey: Any, pair_key: Any
) -> tuple[Session, asyncio.Future[BaseException]]:
    """Start the handshaken links and build the party's session; the future is set with the
    first failure of either link or of any share computation."""
    if not isinstance(dkey, bytes) or not isinstance(pair_key, bytes):
        raise PeerError("handshake did not deliver the PRG keys")
    for ln in (dlink, plink):
        ln.start()
    provider = DealerProvider(party, PRG(dkey), dlink if party == 1 else None, cfg.round_timeout)
    rt = Runtime(party, plink, provider, fx, pair_key, cfg.round_timeout, dealer=dlink)
    sess = Session(rt)
    failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def on_fail(exc: BaseException) -> None:
        if not failed.done():
            failed.set_result(exc)

    for ln in (dlink, plink):
        ln.on_failure = on_fail
    sess.on_error = on_fail
    return sess, failed


async def until_failure(work: Awaitable[Any], failed: asyncio.Future[BaseException]) -> Any:
    """``await work``, unless ``failed`` is set first: then cancel the work and raise the failure.
    If this waiter is cancelled itself (a session shut down), the work is cancelled too and its
    outcome is retrieved when it ends (no orphaned task, no "exception never retrieved")."""
    main = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({main, failed}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        main.cancel()
        main.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise
    if main not in done:
        main.cancel()
        with contextlib.suppress(BaseException):
            await main
        raise failed.result()
    return main.result()


async def run_party(
    party: int,
    cfg: ClusterConfig,
    program: Program,
    inputs: dict[str, Any] | None = None,
    netsim: str | None = None,
    prefetch: list[tuple[str, str, dict[str, Any]]] | None = None,
) -> PartyResult:
    """Connect, run ``program(session, inputs)``, close. Raises on any failure (after aborting peers)."""
    if party not in (0, 1):
        raise ConfigError(f"party id must be 0 or 1, got {party}")
    _prepare_process()
    profile = resolve_profile(netsim, cfg.netsim)
    fx = FixedPoint(cfg.frac_bits)
    name, digest = program_fingerprint(program)
    sctx, cctx = tls_contexts(cfg, party)
    hello = {
        "role": "party",
        "program": name,
        "program_hash": digest,
        "frac_bits": cfg.frac_bits,
        "wire_version": wire.VERSION,
        "netsim": profile.name,
        "agree": handshake_fields(program, dict(inputs or {})),
    }
    log.info(
        "%s starting session %r, program %s",
        party_name(party),
        cfg.session,
        name,
        extra={"event": "start", "netsim": profile.name},
    )
    links: list[Link] = []
    listener: Listener | None = None
    try:
        if party == 0:
            pair_key = new_key()
            dlink, dinfo = await open_link(
                0, 2, cfg.endpoints[2], cfg.session, hello, cfg.connect_timeout, profile, cfg.max_frame, cctx
            )
            links.append(dlink)
            plink, pinfo = await open_link(
                0,
                1,
                cfg.endpoints[1],
                cfg.session,
                {**hello, "pair_key": pair_key},
                cfg.connect_timeout,
                profile,
                cfg.max_frame,
                cctx,
            )
            links.append(plink)
        else:
            listener = Listener(
                1, {0}, cfg.session, hello, profile, cfg.max_frame, sctx, min(10.0, cfg.connect_timeout)
            )
            await listener.start(cfg.binds[1], cfg.endpoints[1].port)
            dlink, dinfo = await open_link(
                1, 2, cfg.endpoints[2], cfg.session, hello, cfg.connect_timeout, profile, cfg.max_frame, cctx
            )
            links.append(dlink)
            plink, pinfo = (await listener.wait(cfg.connect_timeout))[0]
            links.append(plink)
            pair_key = pinfo.get("pair_key")
        _check_same(hello, pinfo, 1 - party, AGREE)
        _log_links(party, links)
        sess, failed = start_session(party, cfg, fx, plink, dlink, dinfo.get("prg_key"), pair_key)
        provider = sess.rt.provider
        set_prefix("m/")  # queries run with run_query count under q<i>/
        if prefetch:
            provider.request_batch(prefetch)
        t0 = time.perf_counter()
        sess.rt.started = t0
        sess.rt.cpu_started = time.process_time()
        output = await until_failure(program(sess, dict(inputs or {})), failed)
        stats = sess.rt.stats()
        await asyncio.gather(*(ln.close() for ln in links))
        log.info(
            "%s finished: %d rounds, %d bytes sent to the peer, %.3f s",
            party_name(party),
            stats["rounds"],
            stats["online_bytes_sent"],
            stats["wall_time"],
            extra={"event": "finish"},
        )
        return PartyResult(party, output, stats, profile, list(provider.plan))
    except BaseException as exc:
        reason = f"{party_name(party)} failed: {type(exc).__name__}: {exc}"
        log.error(reason, extra={"event": "abort"})
        for ln in links:
            ln.abort(reason)
        raise
    finally:
        if listener is not None:
            listener.close()
