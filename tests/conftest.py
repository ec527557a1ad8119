"""Shared test helpers: one tolerance check for every protocol test (CrypTen's _check idea)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# query plans cached by P1 (secformer.plans) stay inside this test session
os.environ.setdefault("SECFORMER_CACHE", tempfile.mkdtemp(prefix="secformer-test-cache-"))
os.environ.setdefault("PYTHONPATH", str(ROOT))
if str(ROOT) not in os.environ["PYTHONPATH"].split(os.pathsep):
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ["PYTHONPATH"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def check(actual, expected, atol: float, rtol: float = 0.0, msg: str = "") -> None:
    """Assert |actual - expected| <= atol + rtol * |expected| everywhere, reporting the worst."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {err.size} outside tolerance; worst at {i}: "
            f"got {actual[i]!r}, expected {expected[i]!r} (err {err[i]:.3g} > {bound[i]:.3g})"
        )


def kill_and_check(cl, victim: str, limit: float = 5.0) -> dict[str, str]:
    """SIGKILL role ``victim`` of a running :class:`secformer.launch.Cluster`; assert that the
    other two exit non-zero with an error within ``limit`` seconds. Returns their logs."""
    import signal
    import time

    cl.procs[victim].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    others = [n for n in cl.procs if n != victim]
    while any(cl.procs[n].poll() is None for n in others) and time.monotonic() - t0 < 2 * limit:
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    logs = {n: cl.log(n) for n in others}
    for n in others:
        code = cl.procs[n].poll()
        assert code is not None, f"{n} still running {elapsed:.1f} s after {victim} was killed"
        assert code != 0, f"{n} exited 0 after {victim} died: {logs[n]}"
        assert "error" in logs[n].lower(), logs[n]
    assert elapsed < limit, f"took {elapsed:.2f} s"
    return logs
