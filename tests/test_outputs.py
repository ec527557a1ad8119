"""What the client learns: one result per query, and the model-extraction attack it stops.

The attack is the one found in review: a client that receives a linear layer's input and output
(the CLS hidden state and the pooler output, or the pooler output and the logits) recovers the
layer's weights by least squares after about H + 1 queries. With the default policy the client
receives only the task's result, and the same attack recovers nothing.
"""

import itertools

import numpy as np
import pytest

from secformer import ProtocolError
from secformer.launch import run_local
from secformer.models.forward import run_plain
from secformer.models.hf import load_weights
from secformer.models.program import infer, tokenize
from tests.tinybert import make_tiny_bert

H = 16
WORDS = ["the", "a", "dog", "cat", "man", "woman", "plays", "eats", "runs", "sees", "red", "big"]
WORDS += ["small", "old", "new", "house", "car", "tree", "river", "song"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("cls"), layers=1, hidden=H, seed=5, init_std=0.2, labels=3))


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=5)) for _ in range(n)]


def _least_squares_attack(received: list[dict[str, np.ndarray]], spec, w) -> float:
    """Best relative error with which any pair of arrays P1 received, (input X, output Y), yields a
    head weight W of Y = f(X W + b) by least squares (f = identity or tanh); inf if none fits."""
    names = sorted(received[0])
    best = np.inf
    targets = {k: w[k] for k in ("pooler.w", "cls.w") if k in w}
    for xn, yn in itertools.permutations(names, 2):
        X = np.concatenate([np.atleast_2d(r[xn])[:1] for r in received])
        Y = np.concatenate([np.atleast_2d(r[yn])[:1] for r in received])
        for inv in (lambda y: y, lambda y: np.arctanh(np.clip(y, -0.999999, 0.999999))):
            A = np.concatenate([X, np.ones((len(X), 1))], axis=1)
            coef = np.linalg.lstsq(A, inv(Y), rcond=None)[0][:-1]
            for t in targets.values():
                if coef.shape == t.shape:
                    best = min(best, float(np.abs(coef - t).max() / np.abs(t).max()))
    return best


def _run(model: str, texts: list[str], reveal: str | None = None, unsafe: str | None = None):
    p0 = {"model": model, "mode": "puma"}
    p1 = {**p0, "texts": texts}
    if reveal:
        p1["reveal"] = reveal
    if unsafe:
        p0["unsafe_reveal"] = unsafe
    return run_local(infer, p0, p1)


def test_least_squares_extraction_recovers_head_weights_only_when_the_owner_enables_intermediates(classifier):
    spec, w = load_weights(classifier)
    texts = _texts(3 * H)
    # the old default: everything revealed. The attack recovers the classifier and the pooler.
    leaky = _run(classifier, texts, "logits,hidden,pooled", unsafe="hidden,pooled")
    got = [r["outputs"] for r in leaky.outputs[1]["results"]]
    assert _least_squares_attack(got, spec, w) < 1e-2, "the attack must work on intermediate outputs"
    # the default: P1 receives the logits and nothing else; the same attack finds no weight
    safe = _run(classifier, texts)
    got = [r["outputs"] for r in safe.outputs[1]["results"]]
    assert all(set(o) == {"logits"} and o["logits"].shape == (1, 3) for o in got)
    assert _least_squares_attack(got, spec, w) == np.inf
    p0 = [r["outputs"] for r in safe.outputs[0]["results"]]
    assert all(v is None for o in p0 for v in o.values()), "P0 learns nothing"


def test_label_reveals_only_the_argmax_of_the_logits(classifier):
    spec, w = load_weights(classifier)
    texts = _texts(4, seed=1)
    r = _run(classifier, texts, "label")
    ids, masks = tokenize(classifier, texts)
    for res, i, m in zip(r.outputs[1]["results"], ids, masks, strict=True):
        assert set(res["outputs"]) == {"label"}
        logits = run_plain(spec, w, i, m, "puma")["logits"][0]
        assert int(res["outputs"]["label"][0]) == int(np.argmax(logits))


@pytest.mark.parametrize(
    "reveal, unsafe, match",
    [
        ("hidden,logits", None, "model owner has not enabled"),
        ("logits,label", None, "exactly one result"),
        ("pooled", "pooled", "exactly one result"),
        ("weights", None, "unknown output"),
    ],
)
def test_the_model_owner_refuses_requests_beyond_one_result(classifier, reveal, unsafe, match):
    with pytest.raises(ProtocolError, match=match):
        _run(classifier, _texts(1), reveal, unsafe)


def test_the_model_owner_caps_the_queries_of_a_session(classifier):
    with pytest.raises(ProtocolError, match="at most 2 per session"):
        run_local(infer, {"model": classifier, "max_queries": 2}, {"model": classifier, "texts": _texts(3)})


def test_gpt2_reveals_next_token_logits_or_token_only(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300, n_positions=16)).save_pretrained(
        tmp_path
    )
    from secformer.launch import run_local as run
    from tests.programs import model_queries

    spec, w = load_weights(tmp_path)
    ids, masks = np.array([[5, 17, 230, 9, 42, 7]]), np.ones((1, 6))
    inputs = {"model": str(tmp_path), "mode": "puma", "masks": masks, "reveal": "next_logits,token"}
    r = run(model_queries, inputs, {**inputs, "ids": ids})
    out = r.outputs[1]["results"][0]["outputs"]
    ref = run_plain(spec, w, ids[0], masks[0], "puma")["logits"][-1]
    assert out["next_logits"].shape == (1, 300)
    assert np.abs(out["next_logits"][0] - ref).max() < 5e-3
    assert int(out["token"][0]) == int(np.argmax(ref))


def test_a_saturated_output_stops_every_role_instead_of_being_returned(tmp_path):
    """A model whose last LayerNorm shifts by 20000: its embedding leaves half the fixed-point
    range (16384), where a wrapped value would look like a number. P1 refuses it and every role
    stops. (A gain that large is refused earlier, at load: test_models.)"""
    import torch
    from transformers import BertModel

    from secformer import OutOfRangeError

    d = make_tiny_bert(tmp_path / "big", layers=1, hidden=H, seed=3)
    m = BertModel.from_pretrained(d)
    with torch.no_grad():
        m.encoder.layer[-1].output.LayerNorm.bias.fill_(20000.0)
    m.save_pretrained(d)
    with pytest.raises(OutOfRangeError, match=r"output 'embedding': \d+ of 16 values at or beyond 16384"):
        run_local(infer, {"model": str(d), "mode": "puma"}, {"model": str(d), "mode": "puma", "texts": _texts(1)})
