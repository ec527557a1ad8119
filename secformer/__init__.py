"""secformer: private Transformer inference over two-party MPC with a dealer.

Layers, bottom up (each a module named for its concern):

- :mod:`secformer.fixedpoint` -- fixed-point encoding into the ring Z_2^64.
- :mod:`secformer.ring` -- Numba kernels for local ring arithmetic (matmul, truncation, bits).
- :mod:`secformer.prg` -- AES-CTR pseudo-random streams shared between pairs of parties.
- :mod:`secformer.material` -- correlated randomness (Beaver triples, comparison masks), the
  one generator that both the dealer and the party deriving its share from a seed run.
- :mod:`secformer.provider` -- where a party's correlated randomness comes from.
- :mod:`secformer.wire` / :mod:`secformer.link` / :mod:`secformer.mesh` -- frames, the link to one
  peer, who connects to whom (no protocols).
- :mod:`secformer.runtime` -- a party's runtime: message counters, exchange, statistics.
- :mod:`secformer.protocols` -- the MPC protocols (never touch sockets).
- :mod:`secformer.session` -- the user API: shared tensors, operators, reveal.
- :mod:`secformer.launch` -- run a program on three local processes.
"""

import os as _os

# Numba's OpenMP threads spin after each parallel region and then fight OpenBLAS's threads for
# the same cores (measured: a 0.1 ms Numba kernel before a dgemm made the pair 1.7x slower).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from secformer.errors import (
    ConfigError,
    FixedPointRangeError,
    FrameError,
    OutOfRangeError,
    PeerError,
    ProtocolError,
    SecformerError,
)
from secformer.fixedpoint import FixedPoint

__all__ = [
    "ConfigError",
    "FixedPoint",
    "FixedPointRangeError",
    "FrameError",
    "OutOfRangeError",
    "PeerError",
    "ProtocolError",
    "SecformerError",
]
__version__ = "0.1.0"
