"""A computing party's runtime: program counters, exchange with the other party, statistics.

Protocols see only this object (``rt``): ``rt.party``, ``rt.fx``, ``await rt.exchange(...)``,
``await rt.transfer(...)`` and ``await rt.material(...)``. They never touch sockets.

Message keys are program counters (as in MPyC): every exchange takes the next counter of the
task it runs in; a task spawned with :func:`spawn` counts under its parent's key. Both parties
run the same program, so their keys agree whatever order messages arrive in.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from secformer.errors import ProtocolError
from secformer.fixedpoint import FixedPoint
from secformer.link import Link, party_name
from secformer.material import Fields, Spec
from secformer.provider import TupleProvider

T = TypeVar("T")


@dataclass
class _Counter:
    """Program counter of one task, and its logical round clock (critical-path depth)."""

    prefix: str
    n: int = 0
    clock: int = 0


_pc: contextvars.ContextVar[_Counter] = contextvars.ContextVar("secformer_pc")
category: contextvars.ContextVar[str] = contextvars.ContextVar("secformer_category", default="other")
site: contextvars.ContextVar[str] = contextvars.ContextVar("secformer_site", default="")  # e.g. "L3.ln1"


def next_key() -> str:
    """The next program-counter key of the current task."""
    c = _pc.get(None)
    if c is None:
        c = _Counter("")
        _pc.set(c)
    key = f"{c.prefix}{c.n}"
    c.n += 1
    return key


def set_prefix(prefix: str, clock: int = 0) -> None:
    """Start counting under ``prefix`` in the current context (one prefix per query)."""
    _pc.set(_Counter(prefix, 0, clock))


def current() -> _Counter:
    c = _pc.get(None)
    if c is None:
        c = _Counter("")
        _pc.set(c)
    return c


def depends_on(clock: int) -> None:
    """The current task has used a value that was ready after ``clock`` rounds."""
    c = current()
    if clock > c.clock:
        c.clock = clock


def spawn(coro: Coroutine[Any, Any, T], name: str | None = None) -> tuple[asyncio.Task[T], _Counter]:
    """Run ``coro`` as a task whose messages are keyed under a fresh child counter.

    Returns the task and its counter; the counter's ``clock`` is the task's round depth.
    """
    parent = current()
    key = next_key()
    child = _Counter(key + "/", 0, parent.clock)
    ctx = contextvars.copy_context()
    ctx.run(_pc.set, child)
    return asyncio.get_running_loop().create_task(coro, name=name or key, context=ctx), child


async def gather(*coros: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run sub-protocols concurrently, each under its own child counter (deterministic keys);
    the caller's round clock becomes the deepest of them."""
    spawned = [spawn(c) for c in coros]
    results = await asyncio.gather(*(t for t, _ in spawned))
    depends_on(max((c.clock for _, c in spawned), default=0))
    return list(results)


class Later:
    """A value computed by a concurrently running sub-protocol, awaited where it is needed."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._task, self._counter = spawn(coro)

    async def get(self) -> Any:
        value = await self._task
        depends_on(self._counter.clock)
        return value


class Runtime:
    """Party-side runtime used by every protocol."""

    def __init__(
        self,
        party: int,
        peer: Link,
        provider: TupleProvider,
        fx: FixedPoint | None = None,
        pair_key: bytes | None = None,
        round_timeout: float = 120.0,
        dealer: Link | None = None,
    ) -> None:
        if party not in (0, 1):
            raise ValueError(f"computing parties are 0 and 1, got {party}")
        self.party = party
        self.peer = peer
        self.dealer = dealer
        self.provider = provider
        self.fx = fx or FixedPoint()
        self.pair_key = pair_key
        self.round_timeout = round_timeout
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self.wait_time = 0.0  # summed waits for the peer/dealer (overlapping waits add up)
        self.rounds = 0  # communication rounds on the critical path (max logical clock)
        self.by_category: dict[str, dict[str, Any]] = {}  # payload bytes sent, rounds, time per op type
        self.checks: list[tuple[str, Any]] = []  # range checks awaiting their opening (Session.verify)
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ communication
    async def exchange(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Send our arrays to the other party and receive theirs (same shapes and dtypes).

        One message each way; concurrent exchanges in one loop tick share a frame. The arrays
        are sent without a copy: do not modify them afterwards (a frame can still wait in the
        send queue when the peer's answer is already here).
        """
        key = next_key()
        self._tick()
        self._count(arrays)
        self.peer.send(key, list(arrays))
        theirs = await self._recv(key)
        if len(theirs) != len(arrays):
            raise ProtocolError(
                f"message {key}: we sent {len(arrays)} arrays, {party_name(self.peer.peer)} "
                f"sent {len(theirs)} (parties out of step)"
            )
        for mine, other in zip(arrays, theirs, strict=True):
            if mine.shape != other.shape or mine.dtype != other.dtype:
                raise ProtocolError(
                    f"message {key}: shape/dtype mismatch with {party_name(self.peer.peer)}: "
                    f"ours {mine.shape} {mine.dtype}, theirs {other.shape} {other.dtype}"
                )
        return theirs

    async def transfer(
        self, sender: int, arrays: list[np.ndarray] | None, timeout: float | None = None, tick: bool = True
    ) -> list[np.ndarray] | None:
        """One-way message from ``sender`` to the other party (both call it). The receiver waits
        at most ``timeout`` seconds of the peer's silence (default: the round timeout).
        ``tick=False``: a second message of the same round (it follows one the sender has just
        sent and is needed no earlier), so the round count does not grow."""
        key = next_key()
        if tick:
            self._tick()
        if self.party == sender:
            assert arrays is not None
            self._count(arrays)
            self.peer.send(key, list(arrays))
            return None
        return await self._recv(key, timeout)

    def _tick(self) -> None:
        c = current()
        c.clock += 1
        if c.clock > self.rounds:
            self.rounds = c.clock
            cat = self.by_category.setdefault(category.get(), {"bytes": 0, "rounds": 0, "time": 0.0})
            cat["rounds"] += 1

    def _count(self, arrays) -> None:  # type: ignore[no-untyped-def]
        cat = self.by_category.setdefault(category.get(), {"bytes": 0, "rounds": 0, "time": 0.0})
        cat["bytes"] += sum(a.nbytes for a in arrays)

    def add_time(self, cat: str, seconds: float) -> None:
        self.by_category.setdefault(cat, {"bytes": 0, "rounds": 0, "time": 0.0})["time"] += seconds

    async def _recv(self, key: str, timeout: float | None = None) -> list[np.ndarray]:
        if self._failure is not None:
            raise self._failure
        t0 = time.perf_counter()
        try:
            arrays, _ = await self.peer.recv(key, timeout or self.round_timeout)
        finally:
            self.wait_time += time.perf_counter() - t0
        return arrays

    async def material(self, spec: Spec) -> Fields:
        """This party's share of the correlated randomness ``spec`` asks for (a typed request,
        e.g. ``Trunc(shape, bits)``; see :mod:`secformer.material`)."""
        t0 = time.perf_counter()
        try:
            return await self.provider.get(next_key(), spec.kind, spec.wire())
        finally:
            self.wait_time += time.perf_counter() - t0

    def expect_all(self, bits: Any, what: str) -> None:
        """Record a range check: ``bits`` (integer-scale shares of 0/1 bits, or an awaitable of
        them, e.g. a :class:`Later` comparison) must all be 1. Checks are opened together, as
        counts of violations, by :meth:`secformer.session.Session.verify` (before any reveal)."""
        where = " ".join(p for p in (category.get(), site.get()) if p and p != "other")
        self.checks.append((f"{where}: {what}" if where else what, bits))

    def fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict[str, Any]:
        """Online traffic (to the other party), dealer traffic, rounds and timings."""
        s = self.peer.stats
        d = self.dealer.stats if self.dealer is not None else None
        wall = time.perf_counter() - self.started
        cpu = time.process_time() - self.cpu_started
        return {
            "party": self.party,
            "online_bytes_sent": s.bytes_sent,
            "online_bytes_recv": s.bytes_recv,
            "rounds": self.rounds,
            "frames": s.frames_sent,
            "messages": s.messages_sent,
            "dealer_bytes_sent": d.bytes_sent if d else 0,
            "dealer_bytes_recv": d.bytes_recv if d else 0,
            "dealer_frames_recv": d.frames_recv if d else 0,
            "dealer_requests": self.provider.requests,
            "dealer_waits": self.provider.waits,  # requests the program had to wait for (P1)
            "dealer_wait_time": self.provider.wait_time,
            "wall_time": wall,
            "wait_time": self.wait_time,
            # CPU seconds of this process (all threads) capped at the wall time: the local work
            "compute_time": min(cpu, wall),
            "cpu_time": cpu,
            "by_category": {k: dict(v) for k, v in self.by_category.items()},
        }
