"""Cluster configuration (``cluster.toml``): who runs where, and session-wide settings.

    session = "demo"                 # every frame carries it; the three must agree
    [party0]                         # P0 (model owner) connects out; port unused
    host = "10.0.0.1"
    port = 7400
    [party1]                         # P1 (data owner) listens here for P0
    host = "10.0.0.2"
    port = 7401
    bind = "0.0.0.0"                 # optional listen address (default: host)
    [dealer]                         # the dealer listens here for P0 and P1
    host = "10.0.0.3"
    port = 7402
    max_request_mb = 2048            # largest material it generates for one request
    max_query_gb = 64                # ... and for one query (all its requests)
    [network]
    profile = "none"                 # netsim profile name or path (see netsim/)
    connect_timeout = 30.0           # seconds to wait for peers at start-up
    round_timeout = 120.0            # seconds to wait for any one message
    max_frame_mb = 1024
    [fixed_point]
    frac_bits = 16
    [tls]                            # written by `secformer keygen`; see secformer.tls
    ca = "certs/ca.pem"
    cert = "certs/{role}.pem"
    key = "certs/{role}.key"

The same file works on three hosts: each process reads its own section and its peers'.
Without a [tls] section the processes refuse to start unless told ``--insecure``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secformer.errors import ConfigError
from secformer.mesh import Endpoint
from secformer.tls import TLSConfig

ROLES = {0: "party0", 1: "party1", 2: "dealer"}


@dataclass
class ClusterConfig:
    session: str
    endpoints: dict[int, Endpoint]
    binds: dict[int, str] = field(default_factory=dict)
    netsim: str | None = None
    connect_timeout: float = 30.0
    round_timeout: float = 120.0
    max_frame: int = 1 << 30
    frac_bits: int = 16
    dealer_max_request: int = 2048 << 20  # bytes of material generated for one request
    dealer_max_query: int = 64 << 30  # ... for one query
    tls: TLSConfig | None = None
    insecure: bool = False  # plaintext TCP allowed (set from --insecure, never from the file)

    @classmethod
    def load(cls, path: str | Path) -> ClusterConfig:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"cluster config {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"cluster config {p} is not valid TOML: {exc}") from None
        return cls.from_dict(data, str(p), p.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config", base: Path | None = None) -> ClusterConfig:
        def need(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
            if key not in d:
                raise ConfigError(f"{origin}: missing {where}{key}")
            v = d[key]
            if not isinstance(v, typ) or isinstance(v, bool):
                raise ConfigError(f"{origin}: {where}{key} has the wrong type ({v!r})")
            return v

        session = need(data, "session", str, "")
        if not session or len(session) > 200:
            raise ConfigError(f"{origin}: session must be a non-empty string of at most 200 chars")
        eps: dict[int, Endpoint] = {}
        binds: dict[int, str] = {}
        for pid, sect in ROLES.items():
            s = data.get(sect)
            if not isinstance(s, dict):
                raise ConfigError(f"{origin}: missing section [{sect}]")
            host = need(s, "host", str, f"[{sect}] ")
            port = need(s, "port", int, f"[{sect}] ")
            if not 0 < port < 65536:
                raise ConfigError(f"{origin}: [{sect}] port {port} out of range")
            eps[pid] = Endpoint(host, port)
            binds[pid] = s.get("bind", host)
        net = data.get("network", {})
        fxp = data.get("fixed_point", {})
        cfg = cls(
            session=session,
            endpoints=eps,
            binds=binds,
            netsim=net.get("profile"),
            connect_timeout=float(net.get("connect_timeout", 30.0)),
            round_timeout=float(net.get("round_timeout", 120.0)),
            max_frame=int(float(net.get("max_frame_mb", 1024)) * (1 << 20)),
            frac_bits=int(fxp.get("frac_bits", 16)),
            dealer_max_request=int(float(data["dealer"].get("max_request_mb", 2048)) * (1 << 20)),
            dealer_max_query=int(float(data["dealer"].get("max_query_gb", 64)) * (1 << 30)),
        )
        if "tls" in data:
            if not isinstance(data["tls"], dict):
                raise ConfigError(f"{origin}: [tls] must be a section")
            cfg.tls = TLSConfig.from_dict(data["tls"], (base or Path.cwd()).resolve(), origin)
        if cfg.connect_timeout <= 0 or cfg.round_timeout <= 0:
            raise ConfigError(f"{origin}: timeouts must be positive")
        return cfg

    def to_toml(self) -> str:
        lines = [f'session = "{self.session}"']
        for pid, sect in ROLES.items():
            ep = self.endpoints[pid]
            lines += [f"[{sect}]", f'host = "{ep.host}"', f"port = {ep.port}"]
            if self.binds.get(pid, ep.host) != ep.host:
                lines.append(f'bind = "{self.binds[pid]}"')
            if pid == 2:
                lines += [
                    f"max_request_mb = {self.dealer_max_request / (1 << 20)}",
                    f"max_query_gb = {self.dealer_max_query / (1 << 30)}",
                ]
        lines += ["[network]"]
        if self.netsim:
            lines.append(f'profile = "{self.netsim}"')
        lines += [
            f"connect_timeout = {self.connect_timeout}",
            f"round_timeout = {self.round_timeout}",
            f"max_frame_mb = {self.max_frame / (1 << 20)}",
            "[fixed_point]",
            f"frac_bits = {self.frac_bits}",
        ]
        return "\n".join(lines) + "\n" + (self.tls.to_toml() if self.tls else "")
