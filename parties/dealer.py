"""``secformer-dealer --config cluster.toml [--serve]``: serve correlated randomness to P0 and P1.

Without ``--serve`` the dealer serves the one session of the config (``secformer infer``) and
exits; with it, it stays up and serves every session of a model server and its clients
(``secformer serve``), until SIGTERM (drain: running sessions finish, then exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from parties.common import common_args, load_config, run_main, setup_role_logging
from secformer.dealer import run_dealer, run_dealer_service


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="secformer-dealer",
        description="Serve correlated randomness (Beaver triples, comparison and truncation masks) to P0 and P1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common_args(p)
    p.add_argument("--serve", action="store_true", help="stay up and serve many sessions (next to `secformer serve`)")
    p.add_argument("--max-sessions", type=int, default=16, help="--serve: sessions served (or waiting) at once")
    p.add_argument(
        "--memory",
        type=float,
        default=48.0,
        help="--serve: GB the sessions may keep of their weights' masks, shared equally (at most 4 GB each)",
    )
    p.add_argument(
        "--drain-timeout", type=float, default=600.0, help="--serve: seconds SIGTERM waits for running sessions"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    setup_role_logging(a, "dealer")

    async def go():  # type: ignore[no-untyped-def]
        cfg = load_config(a)
        if not a.serve:
            return await run_dealer(cfg, a.netsim)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_dealer_service(cfg, a.netsim, a.max_sessions, a.drain_timeout, stop, a.memory * 1e9)

    stats = run_main("secformer-dealer", go())
    if a.serve:
        print(f"dealer service stopped: {json.dumps(stats)}", file=sys.stderr)
    else:
        print(f"dealer served {stats['requests']} requests, generation {stats['gen_time']:.3f} s", file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
    main()
