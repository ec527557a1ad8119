"""Structured logging of the three processes, without secrets.

Every record carries the role (P0, P1, dealer) and, when given, an ``event`` name and fields
(``log.info("...", extra={"event": "link", "peer": "P1"})``). Two formats: ``text`` (one
human line, fields as ``k=v``) and ``json`` (one object per line, for collectors).

What is logged: connections, handshakes, refusals, round/byte counts, timings, errors. What
never is: shares, masks, inputs, weights, outputs, keys. Protocol code does not log values;
as a second line of defence :class:`RedactFilter` replaces any array or byte-string argument
(the types secrets travel in) by its shape or length before a record is formatted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import numpy as np

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "role"}


def _redact(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return f"<array {v.dtype} {v.shape} redacted>"
    if isinstance(v, bytes | bytearray | memoryview):
        return f"<{len(v)} bytes redacted>"
    if isinstance(v, np.generic):
        return "<scalar redacted>"
    return v


class RedactFilter(logging.Filter):
    """Replace array, scalar and bytes arguments and fields of a record by a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact(v) for k, v in record.args.items()}
        for k, v in list(record.__dict__.items()):
            if k not in _STANDARD:
                record.__dict__[k] = _redact(v)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{ts} {self.role} {record.levelname} {record.name}: {record.getMessage()}"
        if extra:
            line += f" [{extra}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "role": self.role,
            "logger": record.name,
            "msg": record.getMessage(),
            **{k: v if isinstance(v, int | float | str | bool | None) else str(v) for k, v in _fields(record).items()},
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def setup_logging(role: str, level: str = "INFO", fmt: str = "text", file: str | None = None) -> None:
    """Configure the root logger of a party or dealer process (stderr, or ``file``)."""
    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {fmt!r}")
    handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(role) if fmt == "json" else TextFormatter(role))
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)
    # third-party chatter (numba's compiler at DEBUG) is not ours to show
    for noisy in ("numba", "asyncio", "filelock", "urllib3", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
