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


FAILED = -1  # a text whose private run stopped out of range (the mode cannot answer it)


def _private(model: str, mode: str, texts: list[str], work: Path) -> np.ndarray:
    """Labels of ``texts`` by private inference: a model server and a dealer service (processes)
    for ``model`` in ``mode``, and one client session that queries the texts one by one. A text
    the mode cannot answer stops its session out of range: it counts as :data:`FAILED` and the
    client opens a new session for the rest."""
    from benchmarks.serve import served
    from secformer.client import Client
    from secformer.errors import SecformerError

    out: list[int] = []
    with served(work, model, "none", ("--mode", mode, "--max-queries", str(len(texts) + 1))) as (conf, _):
        c = Client(conf)
        try:
            for t in texts:
                try:
                    out.append(int(c.classify([t])[0]))
                except SecformerError as exc:  # ours, or the server's abort naming it
                    if not isinstance(exc, OutOfRangeError) and "OutOfRangeError" not in str(exc):
                        raise
                    out.append(FAILED)
                    c.close()
                    c = Client(conf)
        finally:
            c.close()
    return np.array(out)


def _plain(model: str, texts: list[str], mode: str) -> np.ndarray:
    """Plaintext labels (the private runner's approximations in float64); a text the mode cannot
    answer (out of range, where the private run stops) counts as :data:`FAILED`."""
    from secformer.models.forward import run_plain
    from secformer.models.hf import load_weights
    from secformer.models.program import tokenize

    if mode == "exact":
        return np.array([int(np.argmax(o["logits"][0])) for o in plain_outputs(model, texts, mode)])
    spec, w = load_weights(model)
    ids, masks = tokenize(model, texts)
    out = []
    for i, m in zip(ids, masks, strict=True):
        try:
            out.append(int(np.argmax(run_plain(spec, w, i, m, mode)["logits"][0])))
        except OutOfRangeError:
            out.append(FAILED)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--students", default="", help="comma-separated distilled students")
    ap.add_argument("--data", default=None, help="labelled test texts (default: the teacher's test.jsonl)")
    ap.add_argument("--n", type=int, default=2000, help="test texts in plaintext")
    ap.add_argument("--private", type=int, default=0, help="test texts run privately per row")
    ap.add_argument("--teacher-modes", default="crypten,puma", help="modes the teacher runs in besides exact")
    ap.add_argument("--private-teacher-modes", default="puma", help="the teacher's modes also run privately")
    ap.add_argument("--workdir", default="/tmp/secformer-task-accuracy", help="certificates and logs of private runs")
    ap.add_argument("--skip", default="", help="comma-separated rows to leave out, as model:mode")
    a = ap.parse_args()
    ts = read_texts(a.data or str(Path(a.teacher) / "test.jsonl"))
    if ts.labels is None:
        raise SystemExit(f"{ts.source} has no labels")
    pick = np.random.default_rng(0).permutation(len(ts.texts))[: a.n]  # the files are in WordNet's order
    texts, labels = [ts.texts[i] for i in pick], [ts.labels[i] for i in pick]
    y = _labels(a.teacher, labels)
    rows = [(a.teacher, m) for m in ["exact", *(m for m in a.teacher_modes.split(",") if m and m != "exact")]]
    rows += [(s, model_mode(s) or "secformer") for s in a.students.split(",") if s]
    skip = {tuple(x.rsplit(":", 1)) for x in a.skip.split(",") if x}
    rows = [r for r in rows if (Path(r[0]).name, r[1]) not in skip]
    print(f"# task accuracy, {today()}\n# machine: {machine()}\n# data: {ts.source}, {len(texts)} test texts")
    print(
        "\n| model | mode | accuracy | macro F1 | gap to teacher (points) | agreement with teacher "
        "| private: texts, accuracy, = plaintext |\n|---|---|---|---|---|---|---|"
    )
    teacher_pred = None
    teacher_acc = 0.0
    for model, mode in rows:
        pred = _plain(model, texts, mode)
        out_of_range = int(np.sum(pred == FAILED))
        if out_of_range == len(texts):
            print(f"| {Path(model).name} | {mode} | fails on every text (out of range) | | | | |", flush=True)
            continue
        acc = float(np.mean(pred == y))
        if teacher_pred is None:
            teacher_pred, teacher_acc = pred, acc
        priv = "–"
        if a.private and mode != "exact" and (model != a.teacher or mode in a.private_teacher_modes.split(",")):
            k = min(a.private, len(texts))
            p = _private(model, mode, texts[:k], Path(a.workdir) / f"{Path(model).name}-{mode}")
            failed = int(np.sum(p == FAILED))
            priv = f"{k}, {np.mean(p == y[:k]):.4f}, {np.mean(p == pred[:k]):.3f}" + (
                f" ({failed} out of range)" if failed else ""
            )
        print(
            f"| {Path(model).name} | {mode} | {acc:.4f}{f' ({out_of_range} out of range)' if out_of_range else ''} "
            f"| {macro_f1(y, pred):.4f} | {100 * (acc - teacher_acc):+.1f} "
            f"| {np.mean(pred == teacher_pred):.4f} | {priv} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
