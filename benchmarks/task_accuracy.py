"""Accuracy on a labelled task, as the SecFormer paper measures it: the fine-tuned teacher and
its distilled students, every model under the modes it runs in, in plaintext (the private
runner's approximations in float64) and privately (three processes) on a subset.

    secformer finetune --out teacher                       # WordNet supersenses (45 labels)
    secformer distill --teacher teacher --out s-secformer --mode secformer
    secformer distill --teacher teacher --out s-mpcformer --mode mpcformer
    python -m benchmarks.task_accuracy --teacher teacher --students s-secformer,s-mpcformer --n 2000 --private 200

The test split is the one ``finetune`` wrote beside the teacher (``test.jsonl``), of which
``--n`` texts are taken in a seeded random order (the file follows WordNet's order, by class). Rows: the
teacher exactly (the HF model), the teacher under ``crypten`` and ``puma`` (approximation alone,
no distillation), each student under its own mode; private rows run the first ``--private`` test
texts over three processes and compare with the labels and with the plaintext row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import machine, today
from secformer.distill.data import read_texts
from secformer.distill.evaluate import macro_f1, plain_outputs
from secformer.errors import OutOfRangeError
from secformer.models.hf import model_mode


def _labels(model: str, labels: list[str]) -> np.ndarray:
    cfg = json.loads((Path(model) / "config.json").read_text())
    ids = {str(v): int(k) for k, v in cfg["id2label"].items()}
    return np.array([ids[lab] for lab in labels])


def _private(model: str, mode: str, texts: list[str]) -> np.ndarray:
    from secformer.launch import run_processes

    inputs = {"model": np.array(model), "mode": np.array(mode)}
    p1 = {**inputs, "texts": np.array(texts), "reveal": np.array("label")}
    r = run_processes("secformer.models.program:infer", inputs, p1, timeout=24 * 3600)
    return np.array([int(np.ravel(q["outputs"]["label"])[0]) for q in r.outputs[1]["results"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--students", default="", help="comma-separated distilled students")
    ap.add_argument("--data", default=None, help="labelled test texts (default: the teacher's test.jsonl)")
    ap.add_argument("--n", type=int, default=2000, help="test texts in plaintext")
    ap.add_argument("--private", type=int, default=0, help="test texts run privately per row")
    ap.add_argument("--teacher-modes", default="crypten,puma", help="modes the teacher runs in besides exact")
    a = ap.parse_args()
    ts = read_texts(a.data or str(Path(a.teacher) / "test.jsonl"))
    if ts.labels is None:
        raise SystemExit(f"{ts.source} has no labels")
    pick = np.random.default_rng(0).permutation(len(ts.texts))[: a.n]  # the files are in WordNet's order
    texts, labels = [ts.texts[i] for i in pick], [ts.labels[i] for i in pick]
    y = _labels(a.teacher, labels)
    rows = [(a.teacher, m) for m in ["exact", *(m for m in a.teacher_modes.split(",") if m and m != "exact")]]
    rows += [(s, model_mode(s) or "secformer") for s in a.students.split(",") if s]
    print(f"# task accuracy, {today()}\n# machine: {machine()}\n# data: {ts.source}, {len(texts)} test texts")
    print(
        "\n| model | mode | accuracy | macro F1 | gap to teacher (points) | agreement with teacher "
        "| private: texts, accuracy, = plaintext |\n|---|---|---|---|---|---|---|"
    )
    teacher_pred = None
    teacher_acc = 0.0
    for model, mode in rows:
        try:
            pred = np.array([int(np.argmax(o["logits"][0])) for o in plain_outputs(model, texts, mode)])
        except OutOfRangeError as exc:
            print(f"| {Path(model).name} | {mode} | fails: {exc} | | | | |", flush=True)
            continue
        acc = float(np.mean(pred == y))
        if teacher_pred is None:
            teacher_pred, teacher_acc = pred, acc
        priv = "–"
        if a.private and mode != "exact":
            k = min(a.private, len(texts))
            p = _private(model, mode, texts[:k])
            priv = f"{k}, {np.mean(p == y[:k]):.4f}, {np.mean(p == pred[:k]):.3f}"
        print(
            f"| {Path(model).name} | {mode} | {acc:.4f} | {macro_f1(y, pred):.4f} | {100 * (acc - teacher_acc):+.1f} "
            f"| {np.mean(pred == teacher_pred):.4f} | {priv} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
