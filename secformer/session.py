"""The library API a party's program uses.

    async def program(sess: Session, inputs: dict) -> ...:
        x = sess.input(0, inputs.get("x"), shape=(4, 8))   # P0 owns x
        w = sess.input(1, inputs.get("w"), shape=(8, 2))   # P1 owns w
        y = (x @ w).relu() * 0.5 + 1.0
        return await sess.reveal(y, to=1)                  # only P1 learns y

Operations on :class:`SecretTensor` return at once with a tensor whose share is computed by a
task (as in MPyC): independent operations run concurrently and their messages share frames.
Shapes are checked when an operation is written down, before any round. ``await`` is needed
only to reveal.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from secformer import material as mat
from secformer.errors import OutOfRangeError, ProtocolError
from secformer.fixedpoint import FixedPoint
from secformer.material import stream_id
from secformer.prg import PRG
from secformer.protocols import base
from secformer.runtime import Runtime, current, depends_on, next_key, set_prefix, spawn
from secformer.runtime import category as _category
from secformer.runtime import site as _site

Public = float | int | np.ndarray


class SecretTensor:
    """A secret-shared fixed-point tensor; this party holds one additive share."""

    __slots__ = ("_counter", "_task", "sess", "shape")
    __array_ufunc__ = None  # numpy defers to our reflected operators (ndarray @ SecretTensor)

    def __init__(self, sess: Session, shape: tuple[int, ...], task: asyncio.Future[np.ndarray], counter: Any):
        self.sess, self.shape, self._task, self._counter = sess, tuple(shape), task, counter

    def __repr__(self) -> str:
        return f"SecretTensor(shape={self.shape}, party={self.sess.party})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    async def share(self) -> np.ndarray:
        """This party's share (uint64); the caller now depends on its rounds."""
        value = await self._task
        depends_on(self._counter.clock)
        return value

    # ---------------------------------------------------------------- arithmetic
    def __add__(self, other: SecretTensor | Public) -> SecretTensor:
        return self.sess.add(self, other)

    __radd__ = __add__

    def __sub__(self, other: SecretTensor | Public) -> SecretTensor:
        return self.sess.add(self, -other if not isinstance(other, SecretTensor) else other.neg())

    def __rsub__(self, other: Public) -> SecretTensor:
        return self.sess.add(self.neg(), other)

    def __neg__(self) -> SecretTensor:
        return self.neg()

    def neg(self) -> SecretTensor:
        return self.sess.local(lambda s: np.uint64(0) - s, self.shape, self)

    def __mul__(self, other: SecretTensor | Public) -> SecretTensor:
        return self.sess.mul(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other: Public) -> SecretTensor:
        if isinstance(other, SecretTensor):
            raise TypeError("division by a secret needs a division protocol (see protocols)")
        return self.sess.mul(self, 1.0 / np.asarray(other, dtype=np.float64))

    def __matmul__(self, other: SecretTensor | np.ndarray) -> SecretTensor:
        return self.sess.matmul(self, other)

    def __rmatmul__(self, other: np.ndarray) -> SecretTensor:
        return self.sess.matmul(other, self)

    def __lt__(self, other: SecretTensor | Public) -> SecretTensor:
        return self.sess.less_than(self, other)

    def __gt__(self, other: SecretTensor | Public) -> SecretTensor:
        if isinstance(other, SecretTensor):
            return self.sess.less_than(other, self)
        return self.sess.less_than(self.neg(), -np.asarray(other, dtype=np.float64))

    def square(self) -> SecretTensor:
        return self.sess.square(self)

    def relu(self) -> SecretTensor:
        return self.sess.relu(self)

    def sign(self) -> SecretTensor:
        """1 for x >= 0, -1 for x < 0 (one comparison: 8 rounds)."""
        return self.sess.protocol(_sign, self.shape, self)

    # ---------------------------------------------------------------- shape ops (local)
    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> SecretTensor:
        shape = _shape_of(self.shape).sum(axis=axis, keepdims=keepdims).shape
        return self.sess.local(lambda s: s.sum(axis=axis, keepdims=keepdims, dtype=np.uint64), shape, self)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> SecretTensor:
        s = self.sum(axis, keepdims)
        n = self.size // max(1, s.size)
        return s * (1.0 / n)

    def reshape(self, *shape: int | Sequence[int]) -> SecretTensor:
        new = _shape_of(self.shape).reshape(*shape).shape
        return self.sess.local(lambda s: s.reshape(new), new, self)

    def transpose(self, *axes: int) -> SecretTensor:
        ax = axes if axes else None
        new = _shape_of(self.shape).transpose(ax).shape
        return self.sess.local(lambda s: np.ascontiguousarray(s.transpose(ax)), new, self)

    @property
    def T(self) -> SecretTensor:  # noqa: N802 - numpy spelling
        return self.transpose()

    def __getitem__(self, idx: Any) -> SecretTensor:
        new = _shape_of(self.shape)[idx].shape
        return self.sess.local(lambda s: np.ascontiguousarray(s[idx]), new, self)


class Session:
    """One party's view of a private computation."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.fx: FixedPoint = rt.fx
        self.party = rt.party
        self._pair_prg = PRG(rt.pair_key) if rt.pair_key else None
        self._tasks: list[asyncio.Task[Any]] = []
        self.error: BaseException | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self._queries: set[int] = set()
        self._verifying: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- task plumbing
    def _spawn(self, shape: tuple[int, ...], coro: Awaitable[np.ndarray]) -> SecretTensor:
        task, counter = spawn(coro)  # type: ignore[arg-type]
        task.add_done_callback(self._task_done)
        self._tasks.append(task)  # strong references to running tasks only (asyncio keeps weak ones)
        if len(self._tasks) > 64:
            self._tasks = [t for t in self._tasks if not t.done()]
        return SecretTensor(self, shape, task, counter)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.error is None:
            self.error = exc
            self.rt.fail(exc)
            if self.on_error is not None:
                self.on_error(exc)

    def local(self, fn: Callable[..., np.ndarray], shape: tuple[int, ...], *xs: SecretTensor) -> SecretTensor:
        """A local (no communication) function of shares."""

        async def run() -> np.ndarray:
            return fn(*[await x.share() for x in xs])

        return self._spawn(shape, run())

    def protocol(
        self,
        fn: Callable[..., Awaitable[np.ndarray]],
        shape: tuple[int, ...],
        *xs: SecretTensor,
        category: str | None = None,
        site: str | None = None,
        **kw: Any,
    ) -> SecretTensor:
        """Run protocol ``fn(rt, *shares, **kw)`` on the shares of ``xs``; ``category`` tags its
        traffic, rounds and time in the per-op-type breakdown (``stats()["by_category"]``);
        ``site`` (e.g. "L3.ln1") names where it runs in error messages of its range checks."""

        async def run() -> np.ndarray:
            shares = [await x.share() for x in xs]
            if category is not None:
                _category.set(category)
            if site is not None:
                _site.set(site)
            t0 = time.perf_counter()
            out = await fn(self.rt, *shares, **kw)
            self.rt.add_time(_category.get(), time.perf_counter() - t0)
            return out

        return self._spawn(shape, run())

    def _own(self, x: Any) -> SecretTensor:
        if not isinstance(x, SecretTensor) or x.sess is not self:
            raise ProtocolError("operand is not a SecretTensor of this session")
        return x

    def encode(self, c: Public, what: str = "public operand") -> np.ndarray:
        return self.fx.encode(np.asarray(c, dtype=np.float64), what)

    # ---------------------------------------------------------------- inputs and outputs
    def input(self, owner: int, value: np.ndarray | None = None, shape: Sequence[int] | None = None) -> SecretTensor:
        """Secret-share ``value`` held by party ``owner``; the other party passes ``shape``.

        The non-owner's share is drawn from the PRG key the two parties share, so sharing
        costs no traffic but one small message that checks the shapes agree.
        """
        if owner not in (0, 1):
            raise ProtocolError(f"input owner must be 0 or 1, got {owner}")
        if self.party == owner:
            if value is None:
                raise ProtocolError(f"P{owner} owns this input but passed no value")
            enc = self.fx.encode(value, f"input of P{owner}")
            if shape is not None and tuple(shape) != enc.shape:
                raise ProtocolError(f"input shape {enc.shape} differs from declared shape {tuple(shape)}")
            shp = enc.shape
        else:
            if shape is None:
                raise ProtocolError(f"P{self.party} must pass the shape of P{owner}'s input")
            shp = tuple(int(d) for d in shape)
            enc = None
        if self._pair_prg is None:
            raise ProtocolError("no pairwise key: the session was not set up by a runtime")
        prg = self._pair_prg

        async def run() -> np.ndarray:
            key = next_key()
            desc = await self.rt.transfer(owner, [np.asarray(shp, dtype=np.int64)])
            if desc is not None and tuple(int(d) for d in desc[0]) != shp:
                raise ProtocolError(
                    f"input of P{owner}: P{owner} has shape {tuple(int(d) for d in desc[0])}, "
                    f"P{self.party} expects {shp}"
                )
            other = prg.uint64(stream_id(key), 0, shp)
            return enc - other if enc is not None else other

        return self._spawn(shp, run())

    async def reveal(self, x: SecretTensor, to: int | None = None) -> np.ndarray | None:
        """Decode x to both parties (``to=None``) or to party ``to`` only (others get None)."""
        x = self._own(x)
        if to not in (None, 0, 1):
            raise ProtocolError(f"reveal target must be 0, 1 or None, got {to}")

        await self.verify()

        async def run() -> np.ndarray | None:
            s = await x.share()
            if to is None:
                return await base.open_(self.rt, s)
            return await base.reveal_to(self.rt, s, to)

        task, counter = spawn(run())
        out = await task
        depends_on(counter.clock)
        return None if out is None else self.fx.decode(out)

    async def verify(self) -> None:
        """Open every pending range check (1 round, 8 B per check) and raise
        :class:`OutOfRangeError` naming the op, where it ran and how many values left its range.
        :meth:`reveal` calls it first, so no result of an out-of-range computation is revealed.
        Both parties learn the counts, which are 0 in any run that goes on."""
        if self.rt.checks:
            checks, self.rt.checks = self.rt.checks, []
            task, counter = spawn(self._verify(checks))
            self._verifying = task
            await task
            depends_on(counter.clock)
        elif self._verifying is not None and not self._verifying.done():
            await self._verifying  # a concurrent reveal started it: no result before its outcome
        elif self._verifying is not None:
            self._verifying.result()  # re-raises a failed check

    async def _verify(self, checks: list[tuple[str, Any]]) -> None:
        counts, sizes = [], []
        for _, bits in checks:
            b = await bits.get() if hasattr(bits, "get") else bits
            total = np.asarray(b, dtype=np.uint64).reshape(-1).sum(dtype=np.uint64, keepdims=True)
            zeros = (np.uint64(b.size) if self.party == 0 else np.uint64(0)) - total  # [P0] size - sum(b)
            counts.append(zeros[0])
            sizes.append(b.size)

        opened = await base.open_(self.rt, np.array(counts, dtype=np.uint64))
        bad = [(w, int(c), n) for (w, _), c, n in zip(checks, opened, sizes, strict=True) if c]
        if bad:
            w, c, n = bad[0]
            more = f" (and {len(bad) - 1} more checks, the last at {bad[-1][0]})" if len(bad) > 1 else ""
            raise OutOfRangeError(
                f"{w}: {c} of {n} values outside the range its protocol is correct on{more}; the result would "
                "be wrong (an approximation mode on a model not distilled for it, or inputs out of range)"
            )

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        return list(await asyncio.gather(*aws))

    # ---------------------------------------------------------------- queries and offline phase
    async def run_query(self, index: int, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        """Run ``fn(*args, **kw)`` as query ``index``: its messages and material are keyed under
        ``q<index>/``, so a query with the same structure has the same plan (see :meth:`plan`)."""
        if not isinstance(index, int) or index < 0:
            raise ProtocolError(f"query index must be a non-negative int, got {index!r}")
        if index in self._queries:
            raise ProtocolError(f"query {index} was already run in this session (keys must not repeat)")
        self._queries.add(index)
        ctx = contextvars.copy_context()
        ctx.run(set_prefix, f"q{index}/", current().clock)
        counter = ctx.run(current)
        task = asyncio.get_running_loop().create_task(fn(*args, **kw), context=ctx)
        result = await task
        depends_on(counter.clock)
        return result

    async def barrier(self) -> None:
        """Wait until the other party reaches the same point (1 round, no payload)."""
        await self.rt.exchange()

    def plan(self, index: int) -> list[tuple[str, str, dict[str, Any]]]:
        """The material requests query ``index`` made, keys relative to the query."""
        pre = f"q{index}/"
        return [(k[len(pre) :], kind, spec) for k, kind, spec in self.rt.provider.plan if k.startswith(pre)]

    async def prefetch(self, plan: list[tuple[str, str, dict[str, Any]]], index: int) -> None:
        """Offline phase for query ``index``: fetch all material of ``plan`` in one batch and
        return when it has arrived; the query then needs no dealer traffic."""
        await self.offline(plan, index, memory=math.inf)

    async def offline(
        self, plan: list[tuple[str, str, dict[str, Any]]], index: int, memory: float = 4e9, window: float = 256e6
    ) -> float:
        """Offline phase for query ``index`` within ``memory`` bytes: the plan's first requests
        whose material (this party's fields, 8 B per element) fits are fetched and drawn now;
        the rest is streamed during the query (:meth:`stream`). Returns the seconds it took.
        Costs no round: call :meth:`barrier` after it so both parties start the online phase together."""
        if index in self._queries:
            raise ProtocolError(f"query {index} already ran; run its offline phase before it")
        t0 = time.perf_counter()
        reqs = [(f"q{index}/{k}", kind, spec) for k, kind, spec in plan]
        held, n = 0, 0
        for _, kind, spec in reqs:
            size = sum(8 * math.prod(f.shape) for f in mat.get_kind(kind).fields(spec))
            if held + size > memory:
                break
            held, n = held + size, n + 1
        await self._alive_while(self.rt.provider.prefetch(reqs[:n]))
        if n < len(reqs):
            self.rt.provider.stream(reqs[n:], window)
        return time.perf_counter() - t0

    async def _alive_while(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` (sending the peer nothing) while telling it every few seconds that we
        are alive: an offline phase may outlast the round timeout the peer waits with."""

        async def busy() -> None:
            period = max(0.5, min(10.0, self.rt.round_timeout / 4))
            while True:
                await asyncio.sleep(period)
                self.rt.peer.busy()

        task = asyncio.get_running_loop().create_task(busy())
        try:
            return await work
        finally:
            task.cancel()

    def stream(self, plan: list[tuple[str, str, dict[str, Any]]], index: int, window: float = 256e6) -> None:
        """Pipelined offline phase for query ``index``: request the material of ``plan`` ahead of
        its use, at most ``window`` bytes of dealer answers ahead, and return at once. The
        query then finds most of its material waiting; nothing changes in its rounds or bytes."""
        if index in self._queries:
            raise ProtocolError(f"query {index} already ran; stream its material before running it")
        self.rt.provider.stream([(f"q{index}/{k}", kind, spec) for k, kind, spec in plan], window)

    # ---------------------------------------------------------------- arithmetic
    def add(self, x: SecretTensor, y: SecretTensor | Public) -> SecretTensor:
        x = self._own(x)
        if isinstance(y, SecretTensor):
            shape = np.broadcast_shapes(x.shape, self._own(y).shape)
            return self.local(lambda a, b: a + b, shape, x, y)
        c = self.encode(y)
        shape = np.broadcast_shapes(x.shape, c.shape)
        return self.local(lambda a: base.add_public(self.rt, a, c), shape, x)

    def mul(self, x: SecretTensor | Public, y: SecretTensor | Public) -> SecretTensor:
        if not isinstance(x, SecretTensor):
            x, y = y, x
        x = self._own(x)
        if isinstance(y, SecretTensor):
            shape = np.broadcast_shapes(x.shape, self._own(y).shape)
            return self.protocol(base.mul, shape, x, y)
        yv = np.asarray(y)
        if yv.dtype.kind in "iub":  # integers: exact, no truncation
            k = yv.astype(np.int64).view(np.uint64)
            shape = np.broadcast_shapes(x.shape, k.shape)
            return self.local(lambda a: a * k, shape, x)
        self.fx.check_range(yv, "public operand")
        shape = np.broadcast_shapes(x.shape, yv.shape)
        return self.protocol(base.mul_const, shape, x, c=yv)

    def matmul(self, x: SecretTensor | np.ndarray, y: SecretTensor | np.ndarray) -> SecretTensor:
        xs = x.shape if isinstance(x, SecretTensor) else np.shape(x)
        ys = y.shape if isinstance(y, SecretTensor) else np.shape(y)
        shape = matmul_shape(tuple(xs), tuple(ys))
        if isinstance(x, SecretTensor) and isinstance(y, SecretTensor):
            if x.ndim < 2 or y.ndim < 2:
                raise ProtocolError("secret @ secret needs operands with at least 2 dimensions")
            return self.protocol(base.matmul, shape, self._own(x), self._own(y))
        if isinstance(x, SecretTensor):
            return self.protocol(_matmul_public, shape, x, w=self.encode(y), left=False)
        return self.protocol(_matmul_public, shape, self._own(y), w=self.encode(x), left=True)

    def square(self, x: SecretTensor) -> SecretTensor:
        return self.protocol(base.square, x.shape, self._own(x))

    def relu(self, x: SecretTensor) -> SecretTensor:
        return self.protocol(base.relu, x.shape, self._own(x))

    def less_than(self, x: SecretTensor, y: SecretTensor | Public) -> SecretTensor:
        """[x < y] as a fixed-point 0/1 tensor."""
        d = x - y
        return self.protocol(_lt0, d.shape, d)

    # ---------------------------------------------------------------- statistics
    def stats(self) -> dict[str, Any]:
        return self.rt.stats()


async def _matmul_public(rt: Runtime, a: np.ndarray, w: np.ndarray, left: bool) -> np.ndarray:
    """Shared a @ public w (or w @ a): local ring matmul, then one truncation (1 round)."""
    from secformer import ring

    return await base.truncate(rt, ring.matmul(w, a) if left else ring.matmul(a, w))


async def _lt0(rt: Runtime, d: np.ndarray) -> np.ndarray:
    return (await base.ltz(rt, d)) * np.uint64(rt.fx.scale)


async def _sign(rt: Runtime, x: np.ndarray) -> np.ndarray:
    b = await base.ltz(rt, x)  # 1 - 2b at fixed-point scale
    return base.add_public(rt, np.uint64(0) - np.uint64(2 * rt.fx.scale) * b, np.full(x.shape, np.uint64(rt.fx.scale)))


def _shape_of(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-memory array of ``shape`` for shape arithmetic (reshape, index, transpose)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))


def matmul_shape(xs: tuple[int, ...], ys: tuple[int, ...]) -> tuple[int, ...]:
    """Result shape of ``x @ y`` under numpy's rules, or :class:`ProtocolError`."""
    if len(xs) == 0 or len(ys) == 0:
        raise ProtocolError("matmul needs operands with at least one dimension")
    x2 = (1, *xs) if len(xs) == 1 else xs
    y2 = (*ys, 1) if len(ys) == 1 else ys
    if x2[-1] != y2[-2]:
        raise ProtocolError(f"matmul shape mismatch: {xs} @ {ys}")
    try:
        batch = np.broadcast_shapes(x2[:-2], y2[:-2])
    except ValueError:
        raise ProtocolError(f"matmul batch dimensions do not broadcast: {xs} @ {ys}") from None
    out = (*batch, x2[-2], y2[-1])
    if len(xs) == 1:
        out = out[:-2] + out[-1:]
    if len(ys) == 1:
        out = out[:-1]
    return out


def concatenate(tensors: Sequence[SecretTensor], axis: int = 0) -> SecretTensor:
    """Concatenate secret tensors (local)."""
    sess = tensors[0].sess
    shape = np.concatenate([_shape_of(t.shape) for t in tensors], axis=axis).shape
    return sess.local(lambda *s: np.concatenate(s, axis=axis), shape, *tensors)
