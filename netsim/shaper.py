"""Per-link shaping: when does a frame sent now arrive at the peer?"""

from __future__ import annotations

import random

from netsim.profile import Profile


class Shaper:
    """Models one direction of a link as a FIFO pipe.

    A frame of n bytes handed over at time t leaves the sender once the link is free and
    its n bytes are serialised (n / bandwidth), then arrives one latency (plus jitter) later.
    Arrival order equals send order, as on TCP.
    """

    def __init__(self, profile: Profile, seed: int | None = None) -> None:
        self.profile = profile
        self._busy_until = 0.0
        self._last_arrival = 0.0
        self._rng = random.Random(seed)

    def arrival(self, now: float, nbytes: int) -> float:
        """Absolute arrival time of a frame of ``nbytes`` handed to the link at ``now``."""
        p = self.profile
        start = max(now, self._busy_until)
        self._busy_until = start + p.transfer_time(nbytes)
        jitter = self._rng.uniform(0.0, p.jitter) if p.jitter > 0 else 0.0
        arrive = max(self._busy_until + p.latency + jitter, self._last_arrival)
        self._last_arrival = arrive
        return arrive
