"""Text for distillation and evaluation, from local files only.

Formats: ``.txt`` (one text per line), ``.csv`` and ``.jsonl`` (a ``text`` column/field and an
optional ``label``). The real English corpus we use is WordNet 3.0's glosses and usage examples
(Debian package ``wordnet-base``: ``apt-get install wordnet-base``, files in
``/usr/share/wordnet``); :func:`wordnet_texts` extracts them. A 2,000-line sample with
WordNet's licence ships in ``secformer/distill/sample/`` for tests and quick runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from secformer.errors import ConfigError

WORDNET_DIR = Path("/usr/share/wordnet")
SAMPLE = Path(__file__).parent / "sample" / "wordnet_sample.txt"


@dataclass
class TextSet:
    texts: list[str]
    labels: list[str] | None = None
    source: str = ""


def read_texts(path: str | Path, text_column: str = "text", label_column: str = "label") -> TextSet:
    """Texts (and labels when the file has them) from a .txt, .csv or .jsonl file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data file {p} does not exist")
    texts: list[str] = []
    labels: list[str] = []
    if p.suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if rows and text_column not in rows[0]:
            raise ConfigError(f"{p}: no column {text_column!r} (columns: {', '.join(rows[0])})")
        for r in rows:
            texts.append(r[text_column])
            if label_column in r:
                labels.append(r[label_column])
    elif p.suffix == ".jsonl":
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{p}:{n}: not JSON ({exc})") from None
            if text_column not in obj:
                raise ConfigError(f"{p}:{n}: no field {text_column!r}")
            texts.append(str(obj[text_column]))
            if label_column in obj:
                labels.append(str(obj[label_column]))
    else:
        texts = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    texts = [t.strip() for t in texts]
    if not texts:
        raise ConfigError(f"{p} holds no text")
    if labels and len(labels) != len(texts):
        raise ConfigError(f"{p}: {len(texts)} texts but {len(labels)} labels")
    return TextSet(texts, labels or None, str(p))


_QUOTED = re.compile(r'"([^"]{12,300})"')


def wordnet_texts(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """WordNet 3.0's usage examples and glosses as sentences (about 160,000, deduplicated,
    in file order)."""
    d = Path(wordnet_dir)
    files = [d / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise ConfigError(f"WordNet data not found in {d}: install it with `apt-get install wordnet-base`")
    out: list[str] = []
    seen: set[str] = set()
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1].strip()
            examples = _QUOTED.findall(gloss)
            definition = gloss.split('; "', 1)[0].strip().rstrip(";")
            for t in [definition, *examples]:
                t = t.strip()
                if len(t) >= 12 and t not in seen:
                    seen.add(t)
                    out.append(t[0].upper() + t[1:])
    return out


def split_heldout(texts: list[str], fraction: float = 0.05, salt: str = "heldout") -> tuple[list[str], list[str]]:
    """Deterministic train/held-out split by a hash of each text (stable across runs and
    machines, independent of order)."""
    train, held = [], []
    for t in texts:
        h = int.from_bytes(hashlib.sha256(f"{salt}:{t}".encode()).digest()[:8], "big") / 2**64
        (held if h < fraction else train).append(t)
    return train, held
