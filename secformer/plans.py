"""A client-side cache of query plans, so that a query streams its dealer material from its
first round even when no earlier query of its length ran in this session.

A plan is the list of material requests (key, kind, spec) a query makes (``Session.plan``). It is
fixed by the model's architecture, the mode, the sequence length, what is revealed and the code:
all of that is in the cache key, the code as a hash of secformer's sources. A stale plan would be
refused by the provider (the run stops with a ProtocolError), never served wrongly. Only P1, the
one role that asks the dealer, keeps plans; they hold shapes and kinds, no secret.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

Plan = list[tuple[str, str, dict[str, Any]]]


@cache
def code_fingerprint() -> str:
    """Hash of every source file of the secformer package (a plan depends on the protocols)."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def default_dir() -> Path:
    base = os.environ.get("SECFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "secformer"
    )
    return Path(base) / "plans"


class PlanCache:
    """Plans of one (model, mode, outputs) on disk, one JSON file per sequence length."""

    def __init__(self, directory: Path, *identity: str) -> None:
        self.dir = directory
        self.prefix = hashlib.sha256("\0".join((*identity, code_fingerprint())).encode()).hexdigest()[:24]

    def _path(self, length: int) -> Path:
        return self.dir / f"{self.prefix}-L{int(length)}.json"

    def load(self, length: int) -> Plan | None:
        try:
            raw = json.loads(self._path(length).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, list) or not all(isinstance(r, list) and len(r) == 3 for r in raw):
            return None
        return [(str(k), str(kind), dict(spec)) for k, kind, spec in raw]

    def save(self, length: int, plan: Plan) -> None:
        """Write atomically (a concurrent reader sees the old file or the new one)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self._path(length).with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps([[k, kind, spec] for k, kind, spec in plan]))
            tmp.replace(self._path(length))
        except OSError:
            pass  # a cache that cannot be written only costs speed
