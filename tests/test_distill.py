"""Distillation into the 2Quad student: the student computes what the private runner computes,
its loss goes down, runs resume exactly, and a saved student loads and runs privately."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secformer import ConfigError
from secformer.distill import DistillConfig, distill
from secformer.distill.data import SAMPLE, read_texts, split_heldout
from secformer.distill.student import make_student
from secformer.models.forward import run_plain
from secformer.models.hf import load_weights, model_mode
from tests.tinybert import make_tiny_bert


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-teacher"), layers=2, hidden=64, seed=3, init_std=0.15)


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return read_texts(SAMPLE).texts


def _cfg(teacher: Path, out: Path, **kw) -> DistillConfig:
    base = dict(stage1_steps=30, stage2_steps=10, batch_size=16, lr=3e-4, max_len=32, seed=1, checkpoint_every=10)
    return DistillConfig(teacher=str(teacher), out=str(out), **{**base, **kw})


def test_shipped_sample_is_real_wordnet_text_with_its_licence(sample):
    assert len(sample) == 2000 and len(set(sample)) == 2000
    assert np.mean([len(t.split()) for t in sample]) > 5
    lic = (SAMPLE.parent / "LICENSE-WordNet.txt").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in lic
    train, held = split_heldout(sample)
    assert not set(train) & set(held) and 50 < len(held) < 200
    assert split_heldout(sample[::-1])[1] == held[::-1], "the split depends on the texts, not their order"


def test_text_files_in_three_formats_and_clear_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one line\n\nanother line\n")
    assert read_texts(tmp_path / "a.txt").texts == ["one line", "another line"]
    (tmp_path / "b.csv").write_text("text,label\nhello there,pos\nbad day,neg\n")
    ts = read_texts(tmp_path / "b.csv")
    assert ts.texts == ["hello there", "bad day"] and ts.labels == ["pos", "neg"]
    (tmp_path / "c.jsonl").write_text('{"text": "x y z", "label": 1}\n{"text": "u v"}\n')
    with pytest.raises(ConfigError, match="2 texts but 1 labels"):
        read_texts(tmp_path / "c.jsonl")
    (tmp_path / "d.csv").write_text("sentence\nhi\n")
    with pytest.raises(ConfigError, match="no column 'text'"):
        read_texts(tmp_path / "d.csv")
    with pytest.raises(ConfigError, match="does not exist"):
        read_texts(tmp_path / "nope.txt")


@pytest.mark.parametrize("mode, bound", [("secformer", 5e-3), ("mpcformer", 3e-2)])
def test_student_computes_the_plaintext_runners_approximation(tiny, mode, bound):
    """The torch student (2Quad, padded batches) equals the float64 runner in the same mode,
    up to the runner's own GeLU/LayerNorm approximations: Fourier GeLU ~1e-4 (secformer);
    CrypTen's LayerNorm, which the student keeps exact, ~1e-2 (mpcformer)."""
    spec, w = load_weights(tiny)
    _, student = make_student(tiny, mode)
    rows = [[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102]]
    ids = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros(2, 6, dtype=torch.long)
    for r, t in enumerate(rows):
        ids[r, : len(t)], mask[r, : len(t)] = torch.tensor(t), 1
    with torch.no_grad():
        h = student(input_ids=ids, attention_mask=mask).last_hidden_state.double().numpy()
    for r, t in enumerate(rows):
        ref = run_plain(spec, w, np.array(t), np.ones(len(t)), mode)["hidden"]
        exact = run_plain(spec, w, np.array(t), np.ones(len(t)), "exact")["hidden"]
        assert np.abs(h[r, : len(t)] - ref).max() < bound, mode
        assert np.abs(ref - exact).max() > 0.05, "the approximation must actually change the model"


def test_mpcformer_student_divides_as_the_runner_and_penalises_rows_out_of_its_range():
    """The mpcformer student's 2Quad uses CrypTen's Newton reciprocal of the row mean, as the
    private mode does (equal to the float64 runner's), and, while training, records how far row
    means exceed the range where that division works."""
    from torch import nn

    from secformer.distill import student as st
    from secformer.models.approx import softmax_2quad_newton

    rng = np.random.default_rng(0)
    s = rng.normal(0, 1, (1, 2, 5, 5))
    s[0, 1] += 3.0  # row means of (s + 5)^2 of 50-100: Newton still converges, the penalty is > 0
    mod = nn.Module()
    q = torch.tensor(s)  # scores = q k^T * scaling: take k = I, scaling 1
    k = torch.eye(5, dtype=torch.float64).expand(1, 2, 5, 5)
    v = torch.eye(5, dtype=torch.float64).expand(1, 2, 5, 5)
    mod.eval()
    _, p = st.quad_newton_attention_forward(mod, q, k, v, None, scaling=1.0)
    assert np.abs(p.numpy() - softmax_2quad_newton(s, np.ones(5))).max() < 1e-9
    assert not st.RANGE_PENALTIES  # nothing recorded outside training
    mod.train()
    st.RANGE_PENALTIES.clear()
    st.quad_newton_attention_forward(mod, q, k, v, None, scaling=1.0)
    assert len(st.RANGE_PENALTIES) == 1 and float(st.RANGE_PENALTIES[0]) > 0
    st.RANGE_PENALTIES.clear()


def test_gpt2_student_keeps_causality(tmp_path):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    GPT2Model(
        GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=32, activation_function="gelu")
    ).save_pretrained(tmp_path)
    spec, w = load_weights(tmp_path)
    _, student = make_student(tmp_path, "secformer")
    ids = np.array([5, 17, 230, 9, 42, 7])
    with torch.no_grad():
        h = student(input_ids=torch.tensor(ids[None])).last_hidden_state[0].double().numpy()
    ref = run_plain(spec, w, ids, np.ones(6), "secformer")["hidden"]
    assert np.abs(h - ref).max() < 5e-3


def test_distillation_loss_decreases_in_both_stages(tiny, sample, tmp_path):
    r = distill(_cfg(tiny, tmp_path / "s", stage1_steps=40, stage2_steps=20), sample, progress=False)
    s1 = [loss for _, st, loss in r.losses if st == 1]
    s2 = [loss for _, st, loss in r.losses if st == 2]
    assert len(s1) == 40 and len(s2) == 20
    assert np.mean(s1[-5:]) < 0.6 * np.mean(s1[:5]), s1
    assert np.mean(s2[-5:]) < np.mean(s2[:5]), s2
    meta = json.loads((tmp_path / "s" / "secformer.json").read_text())
    assert meta["mode"] == "secformer" and meta["config"]["seed"] == 1
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


def test_interrupted_run_resumes_to_the_same_student(tiny, sample, tmp_path):
    full = distill(_cfg(tiny, tmp_path / "full"), sample, progress=False)
    part = distill(_cfg(tiny, tmp_path / "part"), sample, progress=False, stop_after=17)
    assert part.steps == 17 and (tmp_path / "part" / "checkpoint.pt").exists()
    with pytest.raises(ConfigError, match="belongs to another run"):
        distill(_cfg(tiny, tmp_path / "part", seed=2), sample, progress=False)
    rest = distill(_cfg(tiny, tmp_path / "part"), sample, progress=False)
    assert [x[0] for x in rest.losses] == list(range(40))
    np.testing.assert_allclose([x[2] for x in rest.losses], [x[2] for x in full.losses], rtol=1e-4)
    _, a = load_weights(tmp_path / "full")
    _, b = load_weights(tmp_path / "part")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4


def test_cli_distils_and_the_saved_student_runs_privately(tiny, tmp_path, capsys):
    """`secformer distill` then `secformer evaluate --private`: the student directory loads as
    it is, its mode is picked up, and its private output matches its plaintext output."""
    from secformer.cli import main

    out = tmp_path / "student"
    args = ["distill", "--teacher", str(tiny), "--data", "sample", "--out", str(out)]
    args += ["--stage1-steps", "30", "--stage2-steps", "10", "--batch-size", "16", "--max-len", "32"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    assert model_mode(out) == "secformer"
    with pytest.raises(SystemExit) as e:
        ev = ["evaluate", "--teacher", str(tiny), "--student", str(out), "--data", "sample", "--n", "60"]
        main([*ev, "--private", "2", "--json", str(tmp_path / "ev.json")])
    assert e.value.code == 0
    res = json.loads((tmp_path / "ev.json").read_text())["results"]
    before, after = res["teacher under the mode (before)"], res["student"]
    assert after["cosine to teacher, mean"] > before["cosine to teacher, mean"], res
    assert res["private"]["texts run privately"] == 2
    assert res["private"]["max |private - plaintext student|"] < 5e-3, res["private"]


def test_classifier_student_is_distilled_on_logits_and_evaluated_on_labels(tmp_path, sample, capsys):
    """A sequence classifier: stage 2 matches logits; `secformer evaluate` reports accuracy,
    macro-F1 and agreement with the teacher on a labelled CSV."""
    from secformer.cli import main

    teacher = make_tiny_bert(tmp_path / "cls", layers=1, hidden=32, seed=4, init_std=0.15, labels=3)
    r = distill(_cfg(teacher, tmp_path / "student", stage1_steps=6, stage2_steps=6), sample, progress=False)
    s2 = [loss for _, st, loss in r.losses if st == 2]
    assert len(s2) == 6 and all(np.isfinite(s2))
    from secformer.distill.evaluate import plain_outputs

    texts = sample[:30]  # labelled with the teacher's own predictions: its accuracy must be 1
    labels = [int(np.argmax(o["logits"][0])) for o in plain_outputs(teacher, texts, "exact")]
    rows = ["text,label", *(f'"{t}",{y}' for t, y in zip(texts, labels, strict=True))]
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit) as e:
        ev = ["evaluate", "--teacher", str(teacher), "--student", str(tmp_path / "student")]
        main([*ev, "--data", str(tmp_path / "labelled.csv"), "--json", str(tmp_path / "ev.json")])
    assert e.value.code == 0
    res = json.loads((tmp_path / "ev.json").read_text())["results"]
    assert set(res) == {"teacher", "student"}
    assert res["teacher"]["accuracy"] == 1.0 and res["teacher"]["macro F1"] == 1.0
    assert res["student"]["agreement with teacher"] == res["student"]["accuracy"]
