"""Shared argument handling and error reporting of the entry points."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from secformer.errors import SecformerError


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="cluster.toml naming hosts and ports")
    p.add_argument("--netsim", default=None, help="network profile: none, lan, wan or a .toml path")
    p.add_argument("--log-level", default="WARNING")


def load_program(ref: str) -> Any:
    """Import "package.module:function"."""
    mod_name, _, fn_name = ref.partition(":")
    if not mod_name or not fn_name:
        raise SecformerError(f"--program must look like 'package.module:function', got {ref!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise SecformerError(f"cannot import program module {mod_name!r}: {exc}") from None
    fn = getattr(mod, fn_name, None)
    if fn is None or not callable(fn):
        raise SecformerError(f"{mod_name} has no callable {fn_name!r}")
    return fn


def run_main(role: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop; on failure print one line naming the cause and exit 1."""
    try:
        try:
            import uvloop

            return uvloop.run(coro)
        except ImportError:  # pragma: no cover
            return asyncio.run(coro)
    except KeyboardInterrupt:
        print(f"{role}: interrupted", file=sys.stderr)
        sys.exit(130)
    except SecformerError as exc:
        print(f"{role}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        print(f"{role}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        logging.getLogger("secformer").debug("traceback", exc_info=True)
        sys.exit(1)
