"""Query results in formats other programs read without secformer: JSON lines, .npy, .npz.

JSON lines (``.jsonl``, or ``-`` for standard output), one object per text, in input order::

    {"index": 0, "text": "A man ...", "tokens": 9, "truncated": false,
     "embedding": [0.0123, ...],          # or "logits": [[...]], "label": 1, "next_logits", "token"
     "time_s": 1.21, "online_bytes": 12345678, "dealer_bytes": 2345678, "rounds": 612}

``.npy``: the result of every text stacked, shape (n, ...) (float64; int64 for ``label`` and
``token``); only when one output was revealed. ``.npz``: one array per revealed output, stacked
the same way, plus ``texts`` (unicode), ``tokens``, ``time_s``, ``online_bytes``,
``dealer_bytes`` and ``rounds``. All load with ``numpy.load(path)`` (no pickle) or ``json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = (".jsonl", ".npy", ".npz")


def _value(v: np.ndarray) -> Any:
    a = np.asarray(v)
    if a.dtype.kind in "iu":
        return int(a.ravel()[0]) if a.size == 1 else a.tolist()
    return a.tolist()


def records(texts: list[str], tokens: list[int], max_len: int, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-ready dict per text (see the module doc)."""
    out = []
    for i, (t, n, r) in enumerate(zip(texts, tokens, results, strict=True)):
        st = r["stats"]
        rec: dict[str, Any] = {"index": i, "text": t, "tokens": int(min(n, max_len)), "truncated": bool(n > max_len)}
        rec.update({k: _value(v) for k, v in r["outputs"].items()})
        rec.update(
            time_s=round(float(st["time"]), 4),
            online_bytes=int(st["online_bytes_sent"]),
            dealer_bytes=int(st["dealer_bytes_recv"]),
            rounds=int(st["rounds"]),
        )
        out.append(rec)
    return out


def write(path: str, texts: list[str], tokens: list[int], max_len: int, results: list[dict[str, Any]]) -> None:
    """Write ``results`` to ``path`` (.jsonl, .npy, .npz, or ``-`` for JSON lines on stdout)."""
    recs = records(texts, tokens, max_len, results)
    if path == "-" or path.endswith(".jsonl"):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        if path == "-":
            sys.stdout.write(lines)
            sys.stdout.flush()
        else:
            Path(path).write_text(lines, encoding="utf-8")
        return
    names = list(results[0]["outputs"]) if results else []
    stacked = {k: np.stack([np.asarray(r["outputs"][k]).reshape(-1) for r in results]) for k in names}
    for k in ("label", "token"):
        if k in stacked:
            stacked[k] = stacked[k].astype(np.int64)[:, 0]
    if path.endswith(".npy"):
        if len(names) != 1:
            raise ValueError(f".npy holds one array; this run revealed {names}: use .npz or .jsonl")
        np.save(path, stacked[names[0]])
        return
    if path.endswith(".npz"):
        np.savez(
            path,
            **stacked,
            texts=np.array(texts, dtype=str),
            tokens=np.array([r["tokens"] for r in recs], dtype=np.int64),
            time_s=np.array([r["time_s"] for r in recs]),
            online_bytes=np.array([r["online_bytes"] for r in recs], dtype=np.int64),
            dealer_bytes=np.array([r["dealer_bytes"] for r in recs], dtype=np.int64),
            rounds=np.array([r["rounds"] for r in recs], dtype=np.int64),
        )
        return
    raise ValueError(f"unknown output format {path!r}: use one of {', '.join(FORMATS)} or - (stdout)")


def read_texts(path: str) -> list[str]:
    """Texts to query: a .txt file (one per line, empty lines skipped) or .jsonl ({"text": ...})."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"texts file {path} does not exist")
    lines = p.read_text(encoding="utf-8").splitlines()
    if p.suffix == ".jsonl":
        out = []
        for n, ln in enumerate(lines, 1):
            if ln.strip():
                obj = json.loads(ln)
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ValueError(f'{path}:{n}: each line must be a JSON object with a "text" string')
                out.append(obj["text"])
        return out
    return [ln for ln in (x.strip() for x in lines) if ln]
