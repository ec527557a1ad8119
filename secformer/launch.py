"""Run a program on P0, P1 and the dealer on this machine (tests, notebooks, the demo).

Two modes, both over real TCP on loopback:
- :func:`run_local` -- three asyncio tasks in this process (fast; for tests and notebooks);
- :func:`run_processes` -- three OS processes started from the console entry points, exactly
  as on three hosts.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import functools
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netsim import Profile, resolve_profile
from secformer.config import ClusterConfig
from secformer.dealer import run_dealer
from secformer.errors import PeerError, SecformerError
from secformer.mesh import Endpoint
from secformer.node import PartyResult, Program, run_party
from secformer.report import format_report
from secformer.tls import TLSConfig, keygen, tls_config_for


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@functools.cache
def local_tls() -> TLSConfig:
    """A throw-away CA and certificates for local runs (one set per process, removed at exit)."""
    d = tempfile.mkdtemp(prefix="secformer-certs-")
    atexit.register(shutil.rmtree, d, True)
    keygen(d, days=2)
    return tls_config_for(d)


def local_cluster(
    session: str | None = None,
    netsim: str | None = None,
    frac_bits: int = 16,
    connect_timeout: float = 20.0,
    round_timeout: float = 120.0,
    insecure: bool = False,
) -> ClusterConfig:
    """Three roles on loopback, free ports; mutual TLS with throw-away certificates unless
    ``insecure``."""
    ports = free_ports(3)
    return ClusterConfig(
        session=session or f"local-{os.getpid()}-{time.monotonic_ns()}",
        endpoints={i: Endpoint("127.0.0.1", ports[i]) for i in range(3)},
        binds={i: "127.0.0.1" for i in range(3)},
        netsim=netsim,
        connect_timeout=connect_timeout,
        round_timeout=round_timeout,
        frac_bits=frac_bits,
        tls=None if insecure else local_tls(),
        insecure=insecure,
    )


@dataclass
class LocalRun:
    """Outputs and statistics of both parties (and the dealer when in-process)."""

    outputs: dict[int, Any]
    stats: dict[int, dict[str, Any]]
    profile: Profile
    wall_time: float
    dealer: dict[str, Any] = field(default_factory=dict)
    plans: dict[int, list[Any]] = field(default_factory=dict)

    def report(self) -> str:
        return format_report(self.stats, self.profile, self.wall_time)


# --------------------------------------------------------------------------- in-process


async def run_local_async(
    program: Program,
    inputs0: dict[str, Any] | None = None,
    inputs1: dict[str, Any] | None = None,
    netsim: str | None = None,
    cfg: ClusterConfig | None = None,
    **cluster_kw: Any,
) -> LocalRun:
    cfg = cfg or local_cluster(netsim=netsim, **cluster_kw)
    t0 = time.perf_counter()
    res = await asyncio.gather(
        run_dealer(cfg, netsim),
        run_party(1, cfg, program, inputs1, netsim),
        run_party(0, cfg, program, inputs0, netsim),
        return_exceptions=True,
    )
    wall = time.perf_counter() - t0
    errors = [r for r in res if isinstance(r, BaseException)]
    if errors:
        # The root cause is the error that is not merely a report of a peer's abort.
        primary = next((e for e in errors if not isinstance(e, PeerError)), errors[0])
        raise primary
    dealer, r1, r0 = res
    assert isinstance(r0, PartyResult) and isinstance(r1, PartyResult)
    return LocalRun(
        outputs={0: r0.output, 1: r1.output},
        stats={0: r0.stats, 1: r1.stats},
        profile=resolve_profile(netsim, cfg.netsim),
        wall_time=wall,
        dealer=dealer,  # type: ignore[arg-type]
        plans={0: r0.plan, 1: r1.plan},
    )


def run_local(program: Program, inputs0=None, inputs1=None, netsim=None, **kw: Any) -> LocalRun:
    """Synchronous wrapper of :func:`run_local_async` (uses uvloop when installed)."""
    return _run(run_local_async(program, inputs0, inputs1, netsim, **kw))


def _run(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop missing on some platforms
        return asyncio.run(coro)


# --------------------------------------------------------------------------- processes


class ProcessFailedError(SecformerError):
    """One or more of the three processes exited non-zero."""

    def __init__(self, message: str, codes: dict[str, int | None], stderr: dict[str, str]):
        super().__init__(message)
        self.codes, self.stderr = codes, stderr


@dataclass
class Cluster:
    """Three running processes started by :func:`start_processes`."""

    procs: dict[str, subprocess.Popen[bytes]]
    workdir: Path
    cfg: ClusterConfig
    netsim: str | None

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.err").read_text(errors="replace")

    def wait(self, timeout: float) -> dict[str, int | None]:
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.05, deadline - time.monotonic()))
        return {n: p.poll() for n, p in self.procs.items()}

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies (no orphans even if
    the launcher is killed with SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_processes(
    program: str,
    inputs0: dict[str, np.ndarray] | None = None,
    inputs1: dict[str, np.ndarray] | None = None,
    netsim: str | None = None,
    workdir: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    cfg: ClusterConfig | None = None,
    echo: str | None = None,
    log_level: str = "INFO",
) -> Cluster:
    """Start dealer, P1 and P0 as separate OS processes running ``program`` ("module:function").

    Each process's output goes to ``<workdir>/<name>.err``, except ``echo`` (e.g. "P1"), whose
    stderr stays on the terminal (progress bars)."""
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="secformer-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = cfg or local_cluster(netsim=netsim)
    (tmp / "cluster.toml").write_text(cfg.to_toml())
    cmds: dict[str, list[str]] = {
        "dealer": [sys.executable, "-m", "parties.dealer", "--config", str(tmp / "cluster.toml")],
    }
    for pid, inp in ((1, inputs1), (0, inputs0)):
        cmd = [
            sys.executable,
            "-m",
            "parties.party",
            "--id",
            str(pid),
            "--config",
            str(tmp / "cluster.toml"),
            "--program",
            program,
            "--output",
            str(tmp / f"out{pid}.pkl"),
            "--quiet",
        ]
        if inp:
            np.savez(tmp / f"in{pid}.npz", **inp)
            cmd += ["--inputs", str(tmp / f"in{pid}.npz")]
        cmds[f"P{pid}"] = cmd
    for name, c in cmds.items():
        if netsim:
            c += ["--netsim", netsim]
        if cfg.insecure:
            c.append("--insecure")
        c += ["--log-level", "WARNING" if name == echo else log_level]
    # The three roles share this machine's cores: one BLAS thread each, unless the caller's
    # environment says otherwise. With two OpenBLAS threads per role on 2 cores, spinning BLAS
    # threads of one role stalled the others for seconds (MiniLM query: 1.2 s with one thread,
    # 4.3-9.8 s with two; docs/BENCHMARKS.md).
    env = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **os.environ, **(extra_env or {})}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    pre = _die_with_parent if sys.platform.startswith("linux") else None
    for name, cmd in cmds.items():
        with (tmp / f"{name}.err").open("wb") as fh:
            err = None if name == echo else subprocess.STDOUT
            procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=err, env=env, preexec_fn=pre)
    return Cluster(procs, tmp, cfg, netsim)


def run_processes(
    program: str,
    inputs0: dict[str, np.ndarray] | None = None,
    inputs1: dict[str, np.ndarray] | None = None,
    netsim: str | None = None,
    timeout: float = 600.0,
    workdir: str | Path | None = None,
    extra_env: dict[str, str] | None = None,
    cfg: ClusterConfig | None = None,
    echo: str | None = None,
    log_level: str = "INFO",
) -> LocalRun:
    """Start the three processes, wait for them, and collect both parties' outputs."""
    cl = start_processes(program, inputs0, inputs1, netsim, workdir, extra_env, cfg, echo, log_level)
    try:
        codes = cl.wait(timeout)
    finally:
        cl.kill_all()
    codes = {n: p.returncode for n, p in cl.procs.items()}
    stderr = {n: cl.log(n) for n in cl.procs}
    if any(c != 0 for c in codes.values()):
        detail = "; ".join(
            f"{n} exit {c}: {stderr[n].strip().splitlines()[-1] if stderr[n].strip() else ''}" for n, c in codes.items()
        )
        raise ProcessFailedError(f"private run failed ({detail})", codes, stderr)
    outs = {pid: pickle.loads((cl.workdir / f"out{pid}.pkl").read_bytes()) for pid in (0, 1)}
    stats = {pid: o["stats"] for pid, o in outs.items()}
    return LocalRun(
        outputs={pid: o["output"] for pid, o in outs.items()},
        stats=stats,
        profile=resolve_profile(netsim, cl.cfg.netsim),
        wall_time=max(s["wall_time"] for s in stats.values()),
    )
