"""Named network profiles kept as TOML files."""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

PROFILE_DIR = Path(__file__).with_name("profiles")
ENV_VAR = "SECFORMER_NETSIM"


@dataclass(frozen=True)
class Profile:
    """One-way latency (s), bandwidth (bytes/s, 0 = unlimited), jitter (s)."""

    name: str = "none"
    latency: float = 0.0
    bandwidth: float = 0.0
    jitter: float = 0.0

    @property
    def shaped(self) -> bool:
        return self.latency > 0 or self.bandwidth > 0 or self.jitter > 0

    def transfer_time(self, nbytes: int) -> float:
        """Serialisation time of ``nbytes`` on this link."""
        return nbytes / self.bandwidth if self.bandwidth > 0 else 0.0

    def estimate(self, rounds: int, nbytes: int) -> float:
        """Analytic network time: rounds x latency + bytes / bandwidth."""
        return rounds * self.latency + self.transfer_time(nbytes)

    def describe(self) -> str:
        if not self.shaped:
            return f"{self.name} (no shaping)"
        bw = f"{self.bandwidth * 8 / 1e6:g} Mbps" if self.bandwidth else "unlimited"
        return f"{self.name} ({self.latency * 1e3:g} ms one-way, {bw}, jitter {self.jitter * 1e3:g} ms)"

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a profile by name (``lan``, ``wan``, ``none``) or from a TOML file path."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".toml" and path.exists()):
        path = PROFILE_DIR / f"{text}.toml"
    if not path.exists():
        raise ValueError(
            f"unknown network profile {text!r}; available: {', '.join(available_profiles())} or a path to a .toml file"
        )
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    unknown = set(data) - {"latency_ms", "bandwidth_mbps", "jitter_ms", "description"}
    if unknown:
        raise ValueError(f"profile {path}: unknown keys {sorted(unknown)}")
    vals = {k: float(data.get(k, 0.0)) for k in ("latency_ms", "bandwidth_mbps", "jitter_ms")}
    if any(v < 0 for v in vals.values()):
        raise ValueError(f"profile {path}: values must be >= 0")
    return Profile(
        name=path.stem,
        latency=vals["latency_ms"] / 1e3,
        bandwidth=vals["bandwidth_mbps"] * 1e6 / 8,
        jitter=vals["jitter_ms"] / 1e3,
    )


def resolve_profile(explicit: str | None = None, configured: str | None = None) -> Profile:
    """Explicit choice, then config, then ``$SECFORMER_NETSIM``, then ``none``."""
    for choice in (explicit, configured, os.environ.get(ENV_VAR)):
        if choice:
            return load_profile(choice)
    return load_profile("none")
