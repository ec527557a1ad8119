"""Shared argument handling and error reporting of the entry points."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from secformer.config import ClusterConfig
from secformer.errors import ConfigError, SecformerError
from secformer.logs import setup_logging


def common_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    """Options every role takes: configuration, network, security, timeouts, logging."""
    p.add_argument("--config", required=config_required, help="cluster.toml naming hosts, ports and TLS files")
    p.add_argument("--netsim", default=None, help="network profile: none, lan, wan or a .toml path")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext TCP without a [tls] section (local tests on a trusted machine only)",
    )
    p.add_argument("--connect-timeout", type=float, default=None, help="seconds to wait for peers (overrides config)")
    p.add_argument("--round-timeout", type=float, default=None, help="seconds without data from a peer before abort")
    p.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="least severe level logged"
    )
    p.add_argument("--log-format", default="text", choices=("text", "json"), help="text lines or JSON lines")
    p.add_argument("--log-file", default=None, help="write the log here instead of stderr")


def setup_role_logging(a: argparse.Namespace, role: str) -> None:
    setup_logging(role, a.log_level, a.log_format, a.log_file)


def load_config(a: argparse.Namespace) -> ClusterConfig:
    """The cluster config with the command line's overrides applied."""
    cfg = ClusterConfig.load(a.config)
    cfg.insecure = bool(a.insecure)
    for name in ("connect_timeout", "round_timeout"):
        v = getattr(a, name)
        if v is not None:
            if v <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
            setattr(cfg, name, v)
    return cfg


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


def _report(role: str, exc: BaseException) -> None:
    if isinstance(exc, SecformerError):
        print(f"{role}: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    else:
        print(f"{role}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        logging.getLogger("secformer").debug("traceback", exc_info=exc)


async def _exit_on_failure(role: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Await ``coro``; if it fails, report and leave the process at once (exit 1).

    By then the role has told its peers why (abort frames). An orderly asyncio shutdown would
    first let every running share computation reach its next await, seconds on a loaded machine;
    leaving at once keeps an aborted run's exit within a second of the abort."""
    try:
        return await coro
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except Exception as exc:
        _report(role, exc)
        await asyncio.sleep(0.05)  # the abort frames leave the socket buffers
        logging.shutdown()
        os._exit(1)


def run_main(role: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop; on failure print one line naming the cause and exit 1.

    With ``SECFORMER_CPROFILE=DIR`` in the environment the whole run is profiled (cProfile) and
    written to DIR/<role>.prof (for the dealer, whose work no query-level profile shows). With
    ``SECFORMER_CPROFILE_CPU=1`` as well it counts the process's CPU time (all threads) instead
    of wall-clock time, so that waiting (the event loop's poll) drops out of the figures."""
    prof_dir = os.environ.get("SECFORMER_CPROFILE")
    if not prof_dir:
        return _run_main(role, coro)
    import cProfile
    import time

    cpu = os.environ.get("SECFORMER_CPROFILE_CPU", "") not in ("", "0")
    prof = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
    prof.enable()
    try:
        return _run_main(role, coro)
    finally:
        prof.disable()
        os.makedirs(prof_dir, exist_ok=True)
        prof.dump_stats(os.path.join(prof_dir, f"{role}.prof"))


def _run_main(role: str, coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        try:
            import uvloop

            return uvloop.run(_exit_on_failure(role, coro))
        except ImportError:  # pragma: no cover
            return asyncio.run(_exit_on_failure(role, coro))
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
