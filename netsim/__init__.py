"""Network simulation: latency, bandwidth and jitter injected at the transport of every link.

A profile is a TOML file (``netsim/profiles/<name>.toml`` or any path)::

    latency_ms = 20.0        # one-way delay
    bandwidth_mbps = 100.0   # serialisation time = bytes * 8 / bandwidth
    jitter_ms = 0.0          # uniform extra delay in [0, jitter_ms], order preserved

Selection, first match wins: explicit argument (API, ``--netsim``), cluster config
``[netsim] profile``, environment variable ``SECFORMER_NETSIM``, else ``none``.
"""

from netsim.profile import Profile, available_profiles, load_profile, resolve_profile
from netsim.shaper import Shaper

__all__ = ["Profile", "Shaper", "available_profiles", "load_profile", "resolve_profile"]
