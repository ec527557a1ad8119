"""Teacher vs student, with the plaintext runner (the private runner's own approximations in
float64) and, on a subset, with private inference itself.

Sentence-embedding models: cosine of the student's embedding to the teacher's (mean, min), and
nearest-neighbour retrieval agreement on held-out sentences. For every query sentence, the
teacher's nearest other sentence is the reference; top-k agreement is the fraction of queries
whose reference is among the student's k nearest. Classifiers: accuracy and macro-F1 against
the labels, and agreement with the teacher's predictions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secformer.models.forward import run_plain
from secformer.models.hf import load_weights
from secformer.models.program import tokenize


def plain_outputs(model_dir: str | Path, texts: list[str], mode: str, max_len: int = 128) -> list[dict[str, Any]]:
    """Per text, the plaintext runner's outputs under ``mode`` ("exact" = the HF model)."""
    spec, w = load_weights(model_dir)
    ids, masks = tokenize(str(model_dir), texts, max_len)
    return [run_plain(spec, w, i, m, mode) for i, m in zip(ids, masks, strict=True)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_unit(a) * _unit(b), axis=-1)


def _sims(e: np.ndarray) -> np.ndarray:
    u = _unit(e)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return s


def retrieval_agreement(teacher: np.ndarray, student: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of queries whose teacher nearest neighbour is within the student's top k."""
    st, ss = _sims(teacher), _sims(student)
    ref = st.argmax(1)
    order = np.argsort(-ss, axis=1)
    return {k: float(np.mean([ref[i] in order[i, :k] for i in range(len(ref))])) for k in ks}


def teacher_margins(teacher: np.ndarray) -> np.ndarray:
    """Per query, the teacher's similarity to its nearest text minus that to its second nearest
    (small margins are near-ties, which any tiny error may swap)."""
    top2 = -np.sort(-_sims(teacher), axis=1)[:, :2]
    return top2[:, 0] - top2[:, 1]


def top1_by_margin(teacher: np.ndarray, student: np.ndarray, margin: float) -> tuple[float, float]:
    """(share of queries whose teacher margin is >= ``margin``, top-1 agreement on them)."""
    keep = teacher_margins(teacher) >= margin
    hit = _sims(teacher).argmax(1) == _sims(student).argmax(1)
    return float(keep.mean()), float(hit[keep].mean()) if keep.any() else float("nan")


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    f1s = []
    for c in np.unique(np.concatenate([y, p])):
        tp = np.sum((p == c) & (y == c))
        prec = tp / max(1, np.sum(p == c))
        rec = tp / max(1, np.sum(y == c))
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return float(np.mean(f1s))


@dataclass
class Report:
    n: int
    mode: str
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def evaluate_embeddings(
    teacher_dir: str | Path, student_dirs: dict[str, str | Path], texts: list[str], mode: str, max_len: int = 128
) -> dict[str, Report]:
    """Cosine and retrieval of each student (plaintext, ``mode``'s approximations) to the teacher."""
    t0 = time.perf_counter()
    ref = np.stack([o["embedding"][0] for o in plain_outputs(teacher_dir, texts, "exact", max_len)])
    out = {}
    for name, d in student_dirs.items():
        emb = np.stack([o["embedding"][0] for o in plain_outputs(d, texts, mode, max_len)])
        c = cosines(emb, ref)
        agree = retrieval_agreement(ref, emb)
        share, clear = top1_by_margin(ref, emb, 0.02)
        out[name] = Report(
            len(texts),
            mode,
            {
                "cosine to teacher, mean": float(c.mean()),
                "cosine to teacher, min": float(c.min()),
                "retrieval agreement top-1": agree[1],
                "retrieval agreement top-5": agree[5],
                "queries with teacher margin >= 0.02": share,
                "retrieval agreement top-1, teacher margin >= 0.02": clear,
            },
            time.perf_counter() - t0,
        )
    return out


def evaluate_classifier(
    teacher_dir: str | Path, student_dir: str | Path, texts: list[str], labels: list[str], mode: str
) -> dict[str, Report]:
    """Accuracy / macro-F1 of teacher (exact) and student (``mode``) against labels.

    Labels may be class indices or the names in the model's ``id2label``."""
    import json

    cfg = json.loads((Path(teacher_dir) / "config.json").read_text())
    names = {str(v): int(k) for k, v in cfg.get("id2label", {}).items()}
    y = np.array([int(names[lab]) if lab in names else int(lab) for lab in labels])
    res = {}
    preds = {}
    for name, d, m in (("teacher", teacher_dir, "exact"), ("student", student_dir, mode)):
        p = np.array([int(np.argmax(o["logits"][0])) for o in plain_outputs(d, texts, m)])
        preds[name] = p
        res[name] = Report(len(texts), m, {"accuracy": float(np.mean(p == y)), "macro F1": macro_f1(y, p)})
    res["student"].metrics["agreement with teacher"] = float(np.mean(preds["student"] == preds["teacher"]))
    return res
