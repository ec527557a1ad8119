"""Where a party's correlated randomness comes from (CrypTen's TupleProvider idea).

:class:`DealerProvider` is the trusted-dealer source: P0 derives its whole share from the key it
shares with the dealer and never talks to the dealer after the handshake; P1 derives its random
fields from its own dealer key and receives only the dealer's corrections. Requests are sent on
demand (coalesced per event-loop tick) or ahead of time with :meth:`DealerProvider.prefetch`.
Swapping the source of randomness means another :class:`TupleProvider`, nothing else.
"""

from __future__ import annotations

import abc
import collections
import time
from typing import Any

import numpy as np

from secformer import material as mat
from secformer.errors import PeerError, ProtocolError
from secformer.link import Link
from secformer.prg import PRG

MAX_ATTACHED = 1 << 16  # requests with values filed ahead (a peer cannot grow this without bound)

Request = tuple[str, str, dict[str, Any]]  # (key, kind, spec as on the wire: material.Spec.wire())


class TupleProvider(abc.ABC):
    """Source of correlated randomness for one party."""

    requests: int = 0
    waits: int = 0  # requests whose material had not arrived when the program asked for it
    wait_time: float = 0.0  # wall seconds during which the program awaited a dealer answer

    @abc.abstractmethod
    async def get(self, key: str, kind: str, spec: dict[str, Any]) -> mat.Fields:
        """This party's fields of material ``kind`` for request ``key``."""

    async def prefetch(self, requests: list[Request]) -> None:  # noqa: B027 - optional hook
        """Get material ahead of time (no-op for sources that need no traffic)."""

    def stream(self, requests: list[Request], window: float) -> None:  # noqa: B027 - optional hook
        """Request material ahead of use, within ``window`` bytes (no-op without traffic)."""


class DealerProvider(TupleProvider):
    """Material from a dealer process, seed-compressed."""

    def __init__(self, party: int, prg: PRG, link: Link | None, timeout: float = 300.0) -> None:
        if party == 1 and link is None:
            raise ValueError("P1 needs a link to the dealer")
        self.party = party
        self.prg = prg
        self.link = link
        self.timeout = timeout
        self.requests = 0
        self.waits = 0
        self.wait_time = 0.0
        self._waiting = 0  # gets awaiting the dealer right now
        self._wait_start = 0.0
        self.plan: list[Request] = []  # every request made, in order: replay it with prefetch
        self._requested: dict[str, tuple[str, dict[str, Any]]] = {}
        self._drawn: dict[str, mat.Fields] = {}  # seeded fields drawn ahead of time
        self._drawn_spec: dict[str, tuple[str, dict[str, Any]]] = {}  # their requests (both parties)
        self._attached: dict[str, dict[str, np.ndarray]] = {}  # values computed offline, by request
        self._received: dict[str, list[np.ndarray]] = {}  # dealer corrections received ahead
        self._ahead: collections.deque[tuple[str, str, dict[str, Any], int]] = collections.deque()
        self._inflight: dict[str, int] = {}  # streamed requests not yet used: bytes of their answers
        self._inflight_bytes = 0
        self._window = 0.0

    def _request(self, key: str, kind: str, spec: dict[str, Any]) -> None:
        if key in self._requested:
            return
        mat.parse_spec(kind, spec)  # what the dealer will check: refuse it here, naming the parameter
        self._requested[key] = (kind, spec)
        if mat.needs_dealer(kind, spec):
            assert self.link is not None
            self.link.expect(key)  # its answer may arrive long before it is used (prefetch)
            self.link.send(key, [], meta={"k": kind, "s": spec})

    def request_batch(self, requests: list[Request]) -> None:
        """Send a batch of requests now (one frame to the dealer); answers are awaited by :meth:`get`."""
        for key, kind, spec in requests:
            mat.get_kind(kind).fields(spec)  # validate before anything is sent
            if self.party == 1:
                self._request(key, kind, spec)

    async def prefetch(self, requests: list[Request], window: float = 64e6) -> None:
        """Offline phase: draw this party's seeded fields of ``requests`` and receive the dealer's
        corrections, so that :meth:`get` costs nothing online. P1 keeps at most ``window`` bytes of
        answers requested and not yet received, so the dealer interleaves other requests (a model
        load's) between chunks instead of after the whole batch."""
        for _, kind, spec in requests:
            mat.get_kind(kind).fields(spec)  # validate before anything is sent
        pending: collections.deque[tuple[str, str, list[mat.Field], int]] = collections.deque()
        inflight = 0
        for key, kind, spec in requests:
            fields = mat.get_kind(kind).fields(spec)
            if key not in self._drawn:
                self._drawn[key] = mat.draw(self.prg, key, fields, self.party)
                self._drawn_spec[key] = (kind, spec)
            if self.party != 1 or not mat.needs_dealer(kind, spec) or key in self._received:
                continue
            nbytes = sum(f.wire_bytes for f in fields if f.p1_from_dealer)
            while pending and inflight + nbytes > window:
                k, kd, fl, n = pending.popleft()
                self._received[k] = await self._receive(k, kd, fl)
                inflight -= n
            self._request(key, kind, spec)
            pending.append((key, kind, fields, nbytes))
            inflight += nbytes
        while pending:
            k, kd, fl, _ = pending.popleft()
            self._received[k] = await self._receive(k, kd, fl)

    def drawn(self, kind: str) -> list[tuple[str, dict[str, Any], mat.Fields]]:
        """This party's material of ``kind`` drawn ahead (prefetched) and not yet used: (key, spec,
        fields). The fields may be extended with values computed offline from them (see
        :func:`secformer.protocols.linear.precompute_owner`)."""
        out = []
        for key, fields in self._drawn.items():
            req = self._drawn_spec.get(key)
            if req is not None and req[0] == kind:
                out.append((key, req[1], fields))
        return out

    def attach(self, key: str, name: str, value: np.ndarray) -> None:
        """File a value computed offline with the fields of request ``key`` (prefetched or not):
        :meth:`get` returns it among them, for the protocol that uses the material."""
        if len(self._attached) >= MAX_ATTACHED and key not in self._attached:
            raise ProtocolError(f"more than {MAX_ATTACHED} requests with values attached ahead")
        self._attached.setdefault(key, {})[name] = value

    def ahead(self, key: str) -> tuple[str, dict[str, Any], mat.Fields] | None:
        """(kind, spec, fields) of one prefetched request not yet used, P1's dealer corrections
        included once received; None if it was not prefetched (or its corrections are missing)."""
        req, mine = self._drawn_spec.get(key), self._drawn.get(key)
        if req is None or mine is None:
            return None
        corr = [f for f in mat.get_kind(req[0]).fields(req[1]) if f.p1_from_dealer] if self.party == 1 else []
        arrays = self._received.get(key)
        if corr and arrays is None:
            return None
        return req[0], req[1], {**mine, **{f.name: a for f, a in zip(corr, arrays or [], strict=True)}}

    def stream(self, requests: list[Request], window: float = 256e6) -> None:
        """Lookahead (pipelined offline phase): request ``requests`` ahead of their use, keeping
        the dealer's answers not yet used within ``window`` bytes. The dealer then generates and
        sends while the parties compute, and its transfer runs beside the P0-P1 traffic instead of
        in front of it. Costs no round; a request the program then makes differently is refused
        by :meth:`get` (ProtocolError), never served twice."""
        if self.party != 1:
            return  # P0 draws its whole share from its seed: nothing to ask
        for key, kind, spec in requests:
            corr = [f for f in mat.get_kind(kind).fields(spec) if f.p1_from_dealer]  # validates
            if (corr or mat.get_kind(kind).notify_dealer) and key not in self._requested:
                self._ahead.append((key, kind, spec, sum(f.wire_bytes for f in corr)))
        self._window = window
        self._pump()

    def _pump(self) -> None:
        while self._ahead and (not self._inflight or self._inflight_bytes < self._window):
            key, kind, spec, nbytes = self._ahead.popleft()
            if key not in self._requested:
                self._request(key, kind, spec)
                self._inflight[key] = nbytes
                self._inflight_bytes += nbytes

    async def get(self, key: str, kind: str, spec: dict[str, Any]) -> mat.Fields:
        fields = mat.get_kind(kind).fields(spec)
        self.requests += 1
        self.plan.append((key, kind, spec))
        if self.party == 1:
            prev = self._requested.get(key)
            if prev is not None and _norm(prev) != _norm((kind, spec)):
                raise ProtocolError(f"prefetched material {key} was {prev}, program asks {(kind, spec)}")
            self._request(key, kind, spec)
        mine = self._drawn.pop(key, None)
        self._drawn_spec.pop(key, None)
        if mine is None:
            mine = mat.draw(self.prg, key, fields, self.party)
        if self.party == 1:
            corr = [f for f in fields if f.p1_from_dealer]
            if corr or mat.get_kind(kind).notify_dealer:
                arrays = self._received.pop(key, None)
                if arrays is None:
                    assert self.link is not None
                    if not self.link.ready(key):
                        self.waits += 1
                    if self._waiting == 0:
                        self._wait_start = time.perf_counter()
                    self._waiting += 1
                    try:
                        arrays = await self._receive(key, kind, fields)
                    finally:
                        self._waiting -= 1
                        if self._waiting == 0:  # wall time with any answer awaited (overlaps once)
                            self.wait_time += time.perf_counter() - self._wait_start
                for f, a in zip(corr, arrays, strict=True):
                    mine[f.name] = a
            used = self._inflight.pop(key, None)
            if used is not None:
                self._inflight_bytes -= used
                self._pump()
        extra = self._attached.pop(key, None)
        if extra:
            mine.update(extra)
        return mine

    async def _receive(self, key: str, kind: str, fields: list[mat.Field]) -> list[np.ndarray]:
        assert self.link is not None
        corr = [f for f in fields if f.p1_from_dealer]
        try:
            arrays, _ = await self.link.recv(key, self.timeout)
        except PeerError as exc:
            raise PeerError(f"dealer material {key} ({kind}): {exc}") from None
        if len(arrays) != len(corr) or any(
            a.shape != f.shape or a.dtype != f.wire_dtype for a, f in zip(arrays, corr, strict=False)
        ):
            raise ProtocolError(f"dealer sent malformed material for {key} ({kind})")
        return [a.astype(np.uint64, copy=False) for a in arrays]


def _norm(req: tuple[str, dict[str, Any]]) -> tuple[str, str]:
    """Compare specs independent of list/tuple spelling (they round-trip through msgpack)."""
    import json

    return req[0], json.dumps(req[1], sort_keys=True, default=list)
