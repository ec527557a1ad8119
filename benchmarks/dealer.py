"""The dealer's CPU per request, for the material of one op at BERT-base shapes.

Runs the dealer's own generation (``material.dealer_generate``: both parties' seeded shares by
AES-CTR, then P1's corrections) in this process, as the dealer role is set up (``tune_malloc``,
ordinary pages), keeping the last few answers alive as a dealer's send queue does. Prints CPU
seconds per request, the median of ``--reps``.

    python -m benchmarks.dealer [--reps 10] [--what gelu]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import machine, today
from secformer import material as mat
from secformer import ring
from secformer.prg import PRG

# the requests of one op, as its protocol makes them ([128, 3072]: BERT-base's FFN width)
REQUESTS = {
    "gelu": [
        mat.Trig((128, 3072), 10, 20, 16),
        mat.LtzLin((128, 3072), blocks=2, gbits=16, bits=31, drop=15),
    ],
}


def cpu_per_request(spec: mat.Spec, reps: int, keep: int = 3) -> float:
    """Median CPU seconds of ``dealer_generate`` for ``spec`` (after one warm-up call)."""
    p0, p1 = PRG(bytes(16)), PRG(bytes(range(16)))
    alive = [mat.dealer_generate(spec.kind, spec.wire(), "warm", p0, p1)]
    times = []
    for i in range(reps):
        t = time.process_time()
        alive.append(mat.dealer_generate(spec.kind, spec.wire(), f"q{i}", p0, p1))
        times.append(time.process_time() - t)
        alive = alive[-keep:]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--what", default=",".join(REQUESTS))
    a = ap.parse_args()
    ring.tune_malloc()
    try:
        ring.no_huge_pages()
    except AttributeError:  # an older checkout, timed with this script: the same page policy
        from numpy._core.multiarray import _set_madvise_hugepage

        _set_madvise_hugepage(False)
    print(f"# dealer CPU per request, {today()}\n# machine: {machine()}")
    print("| op | request | CPU per request (s) |\n|---|---|---|")
    for op in a.what.split(","):
        for spec in REQUESTS[op]:
            print(f"| {op} | {spec.kind} {list(spec.shape)} | {cpu_per_request(spec, a.reps):.4f} |")


if __name__ == "__main__":
    main()
