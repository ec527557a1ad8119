"""Count truncation failures: the dealer-assisted exact truncation against local truncation.

Each trial secret-shares x (uniform shares), truncates it by f bits with both protocols' local
steps and the real dealer material (``secformer.material``), and reconstructs. A failure is a
result off by more than 1 unit from floor(x / 2^f). Magnitudes are log-uniform in
[2^20, 2^max_log2) ring units: at f = 16 and scale 2^2f (a product before truncation), 2^61 is a
real value of 2^29, far beyond what BERT produces; 2^52 (2^20 in real units) is the top of the
BERT range. Local truncation fails with probability |x| / 2^64 per element.

    python -m benchmarks.truncation --n 100000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, today
from secformer import material as mat
from secformer import ring
from secformer.prg import PRG
from secformer.protocols.base import _TWO62, truncate_finish


def count_failures(n: int, bits: int = 16, max_log2: int = 61, seed: int = 0, chunk: int = 1 << 21) -> dict:
    """Failures of exact and local truncation over ``n`` random trials (see the module doc)."""
    rng = np.random.default_rng(seed)
    prg0, prg1 = PRG(bytes(16)), PRG(bytes(range(16)))
    fields = mat.get_kind("trunc").fields({"shape": [chunk], "bits": bits})
    out = {"n": 0, "exact_failures": 0, "exact_max_err": 0, "local_failures": 0, "local_expected": 0.0}
    done = 0
    while done < n:
        m = min(chunk, n - done)
        mag = np.exp2(rng.uniform(20, max_log2, m))
        x = (rng.choice([-1.0, 1.0], m) * mag).astype(np.int64)
        x0 = rng.integers(0, 2**64, m, dtype=np.uint64)
        x1 = x.view(np.uint64) - x0
        want = x >> bits
        key = f"trials/{done}"
        spec = {"shape": [m], "bits": bits}
        f = fields if m == chunk else mat.get_kind("trunc").fields(spec)
        s0 = mat.draw(prg0, key, f, 0)
        corr = mat.dealer_generate("trunc", spec, key, prg0, prg1)  # as it travels (narrow dtypes)
        s1 = {**mat.draw(prg1, key, f, 1), **{k: v.astype(np.uint64) for k, v in corr.items()}}
        c = (x0 + _TWO62 + s0["r"]) + (x1 + s1["r"])  # the opened value
        got = truncate_finish(0, c, s0["rhi"], s0["msb"], bits) + truncate_finish(1, c, s1["rhi"], s1["msb"], bits)
        err = np.abs(got.view(np.int64) - want)
        out["exact_failures"] += int((err > 1).sum())
        out["exact_max_err"] = max(out["exact_max_err"], int(err.max()))
        loc = ring.truncate_share(x0, bits, 0) + ring.truncate_share(x1, bits, 1)
        out["local_failures"] += int((np.abs(loc.view(np.int64) - want) > 1).sum())
        out["local_expected"] += float((mag / 2.0**64).sum())
        done += m
    out["n"] = done
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10**8)
    ap.add_argument("--max-log2", type=int, nargs="+", default=[52, 61])
    a = ap.parse_args()
    print(f"# truncation failures, {today()}\n# machine: {machine()}\n")
    print("| magnitudes (ring units) | trials | exact: failures (max error, ulp) | local: failures | local: expected |")
    print("|---|---|---|---|---|")
    for top in a.max_log2:
        t0 = time.perf_counter()
        r = count_failures(a.n, max_log2=top)
        print(
            f"| 2^20 .. 2^{top} | {r['n']:.1e} | {r['exact_failures']} ({r['exact_max_err']}) | "
            f"{r['local_failures']} | {r['local_expected']:.0f} |  <!-- {time.perf_counter() - t0:.0f} s -->",
            flush=True,
        )


if __name__ == "__main__":
    main()
