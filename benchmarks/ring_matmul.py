"""Ring matmul mod 2^64 vs float64 BLAS, measured in one run.

    python benchmarks/ring_matmul.py

Backends: ``limbs`` (secformer.ring.matmul: exact 3-limb float64 BLAS decomposition, both
operands split per call), ``limbs, rhs pre-split`` (the right operand reused, as for weights),
``numba int64`` (the Numba integer kernel). Also the JIT cost: first use in a fresh process
with an empty Numba cache (compile) and with the cache filled (load).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import best_of, machine, today
from secformer import ring

SHAPES = [(128, 768, 768), (128, 3072, 768), (128, 768, 3072), (512, 768, 768)]


def jit_cost() -> tuple[float, float]:
    code = "import time; t=time.perf_counter(); from secformer import ring;ring.warmup(); print(time.perf_counter()-t)"
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "NUMBA_CACHE_DIR": d}
        cold = float(subprocess.check_output([sys.executable, "-c", code], env=env).decode())
        warm = float(subprocess.check_output([sys.executable, "-c", code], env=env).decode())
    return cold, warm


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"# ring matmul benchmark, {today()}\n# machine: {machine()}\n")
    print("| shape (M x K x N) | float64 BLAS | limbs | ratio | limbs, rhs pre-split | ratio | numba int64 | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for m, k, n in SHAPES:
        a = rng.integers(0, 2**64, (m, k), dtype=np.uint64)
        b = rng.integers(0, 2**64, (k, n), dtype=np.uint64)
        af, bf = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        bl = ring.Limbs(b)
        assert np.array_equal(ring.matmul(a, b), ring._matmul_int(a, b))
        t_blas = best_of(lambda: af @ bf)
        t_l = best_of(lambda: ring.matmul(a, b))
        t_lp = best_of(lambda: ring.matmul(a, bl))
        t_i = best_of(lambda: ring._matmul_int(a, b), repeat=3)
        print(
            f"| {m}x{k}x{n} | {t_blas * 1e3:.2f} ms | {t_l * 1e3:.2f} ms | {t_l / t_blas:.1f}x "
            f"| {t_lp * 1e3:.2f} ms | {t_lp / t_blas:.1f}x | {t_i * 1e3:.2f} ms | {t_i / t_blas:.1f}x |"
        )
    t0 = time.perf_counter()
    cold, warm = jit_cost()
    print(
        f"\nJIT: first use in a fresh process {cold:.2f} s with an empty Numba cache (compile), "
        f"{warm:.2f} s with the cache filled (load); measured in {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
