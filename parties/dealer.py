"""``secformer-dealer --config cluster.toml``: serve correlated randomness to P0 and P1."""

from __future__ import annotations

import argparse
import sys

from parties.common import common_args, load_config, run_main, setup_role_logging
from secformer.dealer import run_dealer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="secformer-dealer",
        description="Serve correlated randomness (Beaver triples, comparison and truncation masks) to P0 and P1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    setup_role_logging(a, "dealer")

    async def go():  # type: ignore[no-untyped-def]
        return await run_dealer(load_config(a), a.netsim)

    stats = run_main("secformer-dealer", go())
    print(f"dealer served {stats['requests']} requests, generation {stats['gen_time']:.3f} s", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    main()
