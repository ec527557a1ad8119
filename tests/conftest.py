"""Shared test helpers: one tolerance check for every protocol test (CrypTen's _check idea)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
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
