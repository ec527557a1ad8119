"""``secformer-party --id 0|1 --config cluster.toml --program module:function``.

Runs one computing party. Inputs come from an ``.npz`` file (names as the program expects);
the output and statistics go to ``--output`` (pickle) and a report to stdout.
"""

from __future__ import annotations

import argparse
import pickle
import sys

import numpy as np

from parties.common import common_args, load_config, load_program, run_main, setup_role_logging
from secformer.node import run_party
from secformer.report import format_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="secformer-party",
        description="Run one computing party (P0 or P1) of a private program. Inputs come from an .npz file "
        "(names as the program expects); the output and statistics go to --output and a report to stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--id", type=int, required=True, choices=(0, 1), help="0: model owner, 1: client")
    common_args(p)
    p.add_argument("--program", default="secformer.demo:mlp", help="module:function to run")
    p.add_argument("--inputs", default=None, help=".npz file with this party's inputs")
    p.add_argument("--output", default=None, help="write output and statistics here (pickle)")
    p.add_argument("--quiet", action="store_true", help="no report on stdout")
    return p


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    role = f"secformer-party P{a.id}"
    setup_role_logging(a, f"P{a.id}")

    async def go():  # type: ignore[no-untyped-def]
        cfg = load_config(a)
        program = load_program(a.program)
        inputs = {}
        if a.inputs:
            with np.load(a.inputs) as z:
                inputs = {k: z[k] for k in z.files}
        return await run_party(a.id, cfg, program, inputs, a.netsim)

    res = run_main(role, go())
    if a.output:
        with open(a.output, "wb") as fh:
            pickle.dump({"output": res.output, "stats": res.stats}, fh)
    if not a.quiet:
        print(f"P{a.id} output: {res.output}")
        print(format_report({a.id: res.stats}, res.profile, res.stats["wall_time"]))
    sys.exit(0)


if __name__ == "__main__":
    main()
