"""A labelled English task that ships offline: WordNet 3.0 supersenses.

Each WordNet synset's definition (its gloss without the usage examples) is labelled with the
synset's lexicographer file, its *supersense*: ``noun.animal``, ``verb.motion``, ``adj.all`` ...
(45 classes, the names of WordNet's ``lexnames`` file, in its order). The text never contains the
synset's own words, so the label must be read from what the definition says. Source: Debian's
``wordnet-base`` (``/usr/share/wordnet``); a stratified sample ships in
``secformer/distill/sample/supersense_sample.jsonl`` under WordNet's licence (``LICENSE-WordNet.txt``
beside it) for tests and quick runs.

The split is fixed by a hash of each text (train / dev / test), so it is the same on every
machine and in every run, whatever the order of the files.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from secformer.distill.data import WORDNET_DIR, read_texts
from secformer.errors import ConfigError

# WordNet 3.0 lexnames(5WN): the lexicographer file numbers 00..44 in the data files
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
SUPERSENSE_SAMPLE = Path(__file__).parent / "sample" / "supersense_sample.jsonl"
SPLITS = ("train", "dev", "test")


@dataclass
class Task:
    """A labelled task: texts and label names per split, and every label name in id order."""

    name: str
    labels: list[str]
    splits: dict[str, tuple[list[str], list[str]]]  # split -> (texts, labels)
    source: str

    def counts(self, split: str) -> dict[str, int]:
        return dict(collections.Counter(self.splits[split][1]))


def supersense_items(wordnet_dir: str | Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """(definition, supersense) for every synset with a definition of at least 12 characters;
    a definition shared by several synsets is kept once, with the first synset's label."""
    d = Path(wordnet_dir)
    files = [d / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise ConfigError(f"WordNet data not found in {d}: install it with `apt-get install wordnet-base`")
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            fields, gloss = line.split(" | ", 1)
            lex = int(fields.split()[1])
            definition = gloss.strip().split('; "', 1)[0].strip().rstrip(";").strip()
            if len(definition) < 12 or definition in seen:
                continue
            seen.add(definition)
            items.append((definition[0].upper() + definition[1:], LEXNAMES[lex]))
    return items


def split_of(text: str, dev: float = 0.05, test: float = 0.05, salt: str = "supersense") -> str:
    """'train', 'dev' or 'test', by a hash of the text (stable across machines and orders)."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{text}".encode()).digest()[:8], "big") / 2**64
    return "test" if h < test else "dev" if h < test + dev else "train"


def make_task(name: str, items: list[tuple[str, str]], source: str, labels: list[str] | None = None) -> Task:
    splits: dict[str, tuple[list[str], list[str]]] = {s: ([], []) for s in SPLITS}
    for text, lab in items:
        t, y = splits[split_of(text)]
        t.append(text)
        y.append(lab)
    names = labels or sorted({lab for _, lab in items})
    unknown = {lab for _, lab in items} - set(names)
    if unknown:
        raise ConfigError(f"labels not in the task's label set: {sorted(unknown)[:5]}")
    return Task(name, list(names), splits, source)


def load_task(data: str | None = None) -> Task:
    """``wordnet`` (the full task from wordnet-base), ``sample`` (the shipped sample; also the
    fallback without wordnet-base when ``data`` is None), or a .jsonl/.csv file with ``text`` and
    ``label`` (split by the same hash)."""
    if data in (None, "wordnet"):
        try:
            items = supersense_items()
            return make_task("supersense", items, "WordNet 3.0 (Debian wordnet-base), definitions", list(LEXNAMES))
        except ConfigError:
            if data == "wordnet":
                raise
    if data in (None, "sample"):
        rows = [json.loads(ln) for ln in SUPERSENSE_SAMPLE.read_text(encoding="utf-8").splitlines() if ln.strip()]
        items = [(r["text"], r["label"]) for r in rows]
        return make_task("supersense", items, f"{SUPERSENSE_SAMPLE.name} (WordNet 3.0 sample)", list(LEXNAMES))
    ts = read_texts(data)
    if ts.labels is None:
        raise ConfigError(f"{data}: a task needs a label for every text (a 'label' column or field)")
    return make_task(Path(data).stem, list(zip(ts.texts, ts.labels, strict=True)), str(data))


def write_sample(path: Path, per_class: int = 60, wordnet_dir: str | Path = WORDNET_DIR) -> int:
    """The shipped sample: up to ``per_class`` definitions of each supersense, by hash order."""
    by: dict[str, list[str]] = collections.defaultdict(list)
    for text, lab in supersense_items(wordnet_dir):
        by[lab].append(text)
    rows = []
    for lab in LEXNAMES:
        texts = sorted(by[lab], key=lambda t: hashlib.sha256(f"sample:{t}".encode()).digest())[:per_class]
        rows += [{"text": t, "label": lab} for t in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
