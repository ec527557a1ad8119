"""Real English prose beyond WordNet, from files already on the machine (nothing downloaded).

A student trained on dictionary glosses alone holds up less well on other text. These sources
broaden the training mix and give held-out corpora of other kinds to evaluate on:

- **docstrings** -- the prose of the docstrings in Python's standard library and in the
  installed packages this project depends on (numpy, torch, transformers, ...): API
  documentation, sentence by sentence (``>>>`` examples, parameter tables and markup dropped);
- **debian** -- Debian's package descriptions: the synopses in apt's package lists when present
  (about 64,000 packages; read with ``lz4cat`` when compressed) and the long descriptions in
  dpkg's status file (the installed packages);
- **licences** -- the licence texts in ``/usr/share/common-licenses`` (Debian's ``base-files``):
  legal prose, held out for evaluation;
- **python-reference** -- the Python language reference's topics that ship with every Python
  (``pydoc_data.topics``): a manual, held out for evaluation.

Every source yields deduplicated sentences in a fixed order; :func:`mix` interleaves sources
with a per-source cap, chosen by a hash of each text (stable across machines and runs).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from secformer.errors import ConfigError

LICENCES_DIR = Path("/usr/share/common-licenses")
APT_LISTS = Path("/var/lib/apt/lists")
DPKG_STATUS = Path("/var/lib/dpkg/status")
# this project's dependencies whose docstrings join the standard library's
DOC_PACKAGES = ("numpy", "torch", "transformers", "tokenizers", "numba", "cryptography", "msgpack", "safetensors")

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")  # :func:`name` -> name
_LITERAL = re.compile(r"`+([^`]+)`+")  # ``code`` / `x` -> code
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]+\)")
_SKIP_DIRS = ("test", "tests", "testing", "site-packages", "idlelib", "_vendor", "vendored")
_BAD = set("=<>{}[]|\\#@$~^*_/")


def sentences(paragraph: str, min_words: int = 6, max_words: int = 48) -> Iterator[str]:
    """The well-formed English sentences of a paragraph: markup removed, 6 to 48 words, starting
    with a capital and ending with . ! or ?, mostly letters, no code-like symbols."""
    text = _MD_LINK.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(r"\1", paragraph)))
    text = " ".join(text.split())
    for s in _SENT_SPLIT.split(text):
        s = s.strip()
        if not (s[:1].isupper() and s[-1:] in ".!?"):
            continue
        words = s.split()
        if not (min_words <= len(words) <= max_words) or any(c in _BAD for c in s):
            continue
        chars = [c for c in s if not c.isspace()]
        if sum(c.isalpha() for c in chars) < 0.85 * len(chars) or "()" in s or "..." in s:
            continue
        yield s


def _paragraphs(doc: str) -> Iterator[str]:
    """Prose paragraphs of a docstring: no doctest, directive, section rule or indented block."""
    for para in re.split(r"\n\s*\n", doc):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if not lines:
            continue
        indent = min(len(ln) - len(ln.lstrip()) for ln in lines)
        body = [ln[indent:] for ln in lines]
        if any(ln.startswith((">>>", "..", ":", "-", "=", "~", " ", "\t", "*", "|")) for ln in body):
            continue
        yield " ".join(body)


def _dedupe(texts: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _units(sents: list[str], passages: bool) -> Iterator[str]:
    """The sentences of one docstring or description, or with ``passages`` its runs of consecutive
    sentences (2 to :data:`PASSAGE_SENTENCES` of them, at most :data:`PASSAGE_WORDS` words)."""
    if not passages:
        yield from sents
        return
    run: list[str] = []
    for s in [*sents, ""]:
        words = sum(len(r.split()) for r in run) + len(s.split())
        if not s or len(run) == PASSAGE_SENTENCES or (run and words > PASSAGE_WORDS):
            if len(run) >= 2:
                yield " ".join(run)
            run = []
        if s:
            run.append(s)


PASSAGE_SENTENCES, PASSAGE_WORDS = 3, 80


def docstring_texts(packages: Iterable[str] = DOC_PACKAGES, stdlib: bool = True, passages: bool = False) -> list[str]:
    """Sentences from the docstrings of the standard library and of installed ``packages``
    (files in sorted order; tests and vendored code skipped; absent packages skipped); with
    ``passages``, runs of 2-3 consecutive sentences of a docstring instead (:func:`_units`)."""
    roots: list[Path] = []
    if stdlib:
        roots.append(Path(sysconfig.get_paths()["stdlib"]))
    roots += [p for p in (_package_dir(n) for n in packages) if p is not None]

    def texts() -> Iterator[str]:
        for root in roots:
            for f in sorted(root.rglob("*.py")):
                rel = f.relative_to(root).parts
                if any(p in _SKIP_DIRS for p in rel):
                    continue
                try:
                    tree = ast.parse(f.read_text(encoding="utf-8", errors="replace"))
                except (SyntaxError, ValueError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                        doc = ast.get_docstring(node)
                        if doc:
                            sents = [t for para in _paragraphs(doc) for t in sentences(para)]
                            yield from _units(sents, passages)

    return _dedupe(texts())


def _debian_records() -> str:
    lists = sorted(APT_LISTS.glob("*_Packages*")) if APT_LISTS.is_dir() else []
    chunks = []
    for p in lists:
        if p.suffix == ".lz4":
            if shutil.which("lz4cat") is None:
                continue
            chunks.append(subprocess.run(["lz4cat", str(p)], capture_output=True, check=True).stdout.decode())
        elif p.suffix in ("", ".txt"):
            chunks.append(p.read_text(encoding="utf-8", errors="replace"))
    if DPKG_STATUS.is_file():
        chunks.append(DPKG_STATUS.read_text(encoding="utf-8", errors="replace"))
    if not chunks:
        raise ConfigError(f"no Debian package lists in {APT_LISTS} and no {DPKG_STATUS}")
    return "\n".join(chunks)


def debian_texts(passages: bool = False) -> list[str]:
    """Debian's package descriptions: each synopsis of 5 words or more (as a phrase, like a
    gloss) and the sentences of the long descriptions (' .' separates paragraphs; more deeply
    indented lines are lists and are skipped). apt's lists hold only synopses; dpkg's status
    file has the long descriptions of the installed packages. With ``passages``: runs of 2-3
    consecutive sentences of the long descriptions only."""

    def texts() -> Iterator[str]:
        for rec in _debian_records().split("\n\n"):
            m = re.search(r"^Description(?:-en)?: (.*)\n((?: .*\n?)*)", rec, flags=re.M)
            if not m:
                continue
            synopsis = m.group(1).strip()
            if not passages and len(synopsis.split()) >= 5 and next(sentences(synopsis + ".", min_words=5), None):
                yield synopsis[0].upper() + synopsis[1:]
            sents = []
            for para in re.split(r"\n \.\s*(?:\n|$)", m.group(2)):
                lines = para.splitlines()
                if lines and all(ln.startswith(" ") and not ln.startswith("  ") for ln in lines):
                    sents += sentences(" ".join(ln.strip() for ln in lines))
            yield from _units(sents, passages)

    return _dedupe(texts())


def licence_texts(directory: str | Path = LICENCES_DIR) -> list[str]:
    """Sentences of the licence texts in ``directory`` (files in sorted order)."""
    d = Path(directory)
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink()) if d.is_dir() else []
    if not files:
        raise ConfigError(f"no licence texts in {d} (Debian's base-files package provides them)")

    def texts() -> Iterator[str]:
        for f in files:
            for para in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
                yield from sentences(para)

    return _dedupe(texts())


def python_reference_texts() -> list[str]:
    """Sentences of the Python language reference's topics (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    def texts() -> Iterator[str]:
        for key in sorted(topics):
            for para in re.split(r"\n\s*\n", topics[key]):
                lines = [ln for ln in para.splitlines() if ln.strip()]
                if lines and not any(ln.startswith((" ", ">>>", "*", "-", "=")) for ln in lines):
                    yield from sentences(" ".join(lines))

    return _dedupe(texts())


SOURCES = {
    "wordnet": "WordNet 3.0 glosses and usage examples (Debian wordnet-base)",
    "docstrings": "docstring prose of Python's standard library and this project's dependencies",
    "debian": "Debian package descriptions (apt lists, else dpkg status)",
    "licences": "licence texts of /usr/share/common-licenses (held out: legal prose)",
    "python-reference": "the Python language reference's topics (held out: a manual)",
    "passages": "runs of 2-3 consecutive sentences of docstrings and Debian long descriptions",
}
MIX = ("wordnet", "docstrings", "debian")  # the training mix; licences and the reference are held out
MIX_LONG = (*MIX, "passages")  # the mix with longer texts (licence sentences run about twice as long)


def passage_texts() -> list[str]:
    """Longer training texts: runs of 2-3 consecutive sentences (at most 80 words) from each
    docstring and each of Debian's long descriptions."""
    return _dedupe([*docstring_texts(passages=True), *debian_texts(passages=True)])


def source_texts(name: str) -> list[str]:
    """All sentences of one source of :data:`SOURCES`."""
    if name == "wordnet":
        from secformer.distill.data import wordnet_texts

        return wordnet_texts()
    fns = {
        "docstrings": docstring_texts,
        "debian": debian_texts,
        "licences": licence_texts,
        "python-reference": python_reference_texts,
        "passages": passage_texts,
    }
    if name not in fns:
        raise ConfigError(f"unknown text source {name!r}; known: {', '.join(SOURCES)}")
    return fns[name]()


def _rank(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{text}".encode()).digest()[:8], "big")


def mix(groups: dict[str, list[str]], per_source: int, salt: str = "mix") -> list[str]:
    """At most ``per_source`` texts of each group (the first by a hash of the text), interleaved
    round-robin so that every stretch of the result holds every source."""
    picked = [sorted(texts, key=lambda t: _rank(t, salt))[:per_source] for texts in groups.values()]
    out = []
    for i in range(max((len(p) for p in picked), default=0)):
        out += [p[i] for p in picked if i < len(p)]
    return _dedupe(out)


if __name__ == "__main__":  # quick look: python -m secformer.distill.prose SOURCE
    for t in source_texts(sys.argv[1])[:20]:
        print(t)
