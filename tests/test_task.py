"""The labelled task (WordNet supersenses) and the teacher's fine-tuning: the loader on real
WordNet lines and on the shipped sample, fixed splits, a short fine-tune whose loss falls, and the
fine-tuned classifier privately equal to its plaintext run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from secformer import ConfigError
from secformer.distill import tasks

# real lines of WordNet 3.0's data files (its licence: secformer/distill/sample/LICENSE-WordNet.txt)
WORDNET_LINES = {
    "noun": [
        "  1 This software and database is being provided to you, the LICENSEE, by  ",
        "00015388 03 n 01 animal 0 041 @ 00004475 n 0000 | a living organism characterized by voluntary movement  ",
        "02084071 05 n 02 dog 0 domestic_dog 0 042 @ 02083346 n 0000 | a member of the genus Canis (probably "
        "descended from the common wolf) that has been domesticated by man since prehistoric times; "
        '"the dog barked all night"  ',
        "02085998 05 n 01 toy_dog 0 003 @ 02084071 n 0000 | ok  ",
    ],
    "verb": [
        "01835496 38 v 01 travel 0 go 1 018 | change location; move, travel, or proceed, also metaphorically; "
        '"How fast does your new car go?"  ',
    ],
    "adj": ["00001740 00 a 01 able 0 005 = 05207437 n 0000 | (usually followed by `to') having the necessary means  "],
    "adv": ['00001740 02 r 01 barely 0 003 | by a small margin; "they barely won"  '],
}


def _wordnet(tmp: Path) -> Path:
    for pos, lines in WORDNET_LINES.items():
        (tmp / f"data.{pos}").write_text("\n".join(lines) + "\n")
    return tmp


def test_supersense_reads_definitions_and_lexicographer_files_from_wordnet_data(tmp_path):
    items = tasks.supersense_items(_wordnet(tmp_path))
    assert items == [
        ("A living organism characterized by voluntary movement", "noun.Tops"),
        (
            "A member of the genus Canis (probably descended from the common wolf) that has been domesticated "
            "by man since prehistoric times",
            "noun.animal",
        ),
        ("Change location; move, travel, or proceed, also metaphorically", "verb.motion"),
        ("(usually followed by `to') having the necessary means", "adj.all"),
        ("By a small margin", "adv.all"),
    ]  # the licence header, usage examples and a too-short definition are left out
    with pytest.raises(ConfigError, match="wordnet-base"):
        tasks.supersense_items(tmp_path / "missing")


def test_shipped_sample_covers_all_45_supersenses_with_fixed_splits():
    task = tasks.load_task("sample")
    assert task.labels == list(tasks.LEXNAMES) and len(task.labels) == 45
    rows = [json.loads(ln) for ln in tasks.SUPERSENSE_SAMPLE.read_text().splitlines()]
    assert sum(len(v[0]) for v in task.splits.values()) == len(rows) > 2000
    assert set(task.counts("train")) == set(tasks.LEXNAMES)  # every class can be learnt
    for split, (texts, labels) in task.splits.items():
        assert all(tasks.split_of(t) == split for t in texts) and len(texts) == len(labels)
    assert 0.03 < len(task.splits["test"][0]) / len(rows) < 0.08  # about 5% each for dev and test
    assert (tasks.SUPERSENSE_SAMPLE.parent / "LICENSE-WordNet.txt").is_file()


def test_a_labelled_file_becomes_a_task_and_an_unlabelled_one_is_refused(tmp_path):
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40))
    )
    task = tasks.load_task(str(tmp_path / "t.jsonl"))
    assert task.labels == ["a", "b"] and sum(len(v[0]) for v in task.splits.values()) == 40
    (tmp_path / "u.txt").write_text("one\ntwo\n")
    with pytest.raises(ConfigError, match="needs a label"):
        tasks.load_task(str(tmp_path / "u.txt"))


def test_short_finetune_loss_falls_and_the_classifier_runs_privately_as_in_plaintext(tmp_path):
    from secformer.distill.finetune import FinetuneConfig, finetune
    from secformer.launch import run_local
    from secformer.models.forward import run_plain
    from secformer.models.hf import load_spec, load_weights
    from secformer.models.program import infer, tokenize
    from tests.tinybert import make_tiny_bert

    base = make_tiny_bert(tmp_path / "base", layers=1, hidden=32, seed=5)
    full = tasks.load_task("sample")
    keep = set(tasks.LEXNAMES[3:7])  # four noun classes: a short run on a tiny model can learn them
    items = [(t, y) for s in tasks.SPLITS for t, y in zip(*full.splits[s], strict=True) if y in keep]
    task = tasks.make_task("supersense-4", items, "sample", sorted(keep))
    cfg = FinetuneConfig(model=str(base), out=str(tmp_path / "cls"), steps=60, batch_size=16, lr=5e-3, max_len=32)
    r = finetune(cfg, task, progress=False)
    first = np.mean([v for _, v in r.losses[:10]])
    last = np.mean([v for _, v in r.losses[-10:]])
    assert last < first - 0.1, (first, last)
    assert set(r.metrics) == {"dev", "test"} and 0 <= r.metrics["test"]["accuracy"] <= 1
    spec = load_spec(r.out)
    assert spec.head == "classifier" and json.loads((r.out / "config.json").read_text())["id2label"]["0"] in keep
    texts = task.splits["test"][0][:2]
    inputs = {"model": str(r.out), "mode": "puma"}
    out = run_local(infer, inputs, {**inputs, "texts": texts, "reveal": "logits"}).outputs[1]["results"]
    _, w = load_weights(r.out)
    ids, masks = tokenize(str(r.out), texts)
    for q in range(2):
        ref = run_plain(spec, w, ids[q], masks[q], "puma")["logits"]
        assert np.abs(out[q]["outputs"]["logits"] - ref).max() < 5e-3
