"""The broader text sources: real files on this machine, clean sentences, a stable mix."""

from __future__ import annotations

import numpy as np
import pytest

from secformer.distill import prose
from secformer.distill.evaluate import retrieval_agreement, teacher_margins, top1_by_margin


def test_sentences_drop_markup_code_and_fragments():
    para = (
        "Return the :func:`sum` of ``x`` over an axis. Use np.sum(x) or x.sum() in code. "
        "See [the guide](https://example.org) for details on axes. Then y = f(x) is not prose. Too short."
    )
    got = list(prose.sentences(para, min_words=4))
    assert got == ["Return the sum of x over an axis.", "See the guide for details on axes."]


def test_docstring_prose_of_a_real_package_is_sentences():
    texts = prose.docstring_texts(["msgpack"], stdlib=False)
    assert len(texts) >= 5
    assert len(set(texts)) == len(texts)
    for t in texts:
        assert t[0].isupper() and t[-1] in ".!?" and ">>>" not in t and "``" not in t


def test_python_reference_ships_with_python_and_gives_hundreds_of_sentences():
    texts = prose.python_reference_texts()
    assert len(texts) >= 300
    assert all(6 <= len(t.split()) <= 48 for t in texts)


@pytest.mark.skipif(not prose.LICENCES_DIR.is_dir(), reason="no /usr/share/common-licenses (not Debian)")
def test_licence_texts_are_legal_sentences_from_the_real_files():
    texts = prose.licence_texts()
    assert len(texts) >= 300
    assert any("warranty" in t.lower() for t in texts)


@pytest.mark.skipif(not prose.DPKG_STATUS.is_file(), reason="no dpkg status file (not Debian)")
def test_debian_descriptions_come_from_the_package_database():
    texts = prose.debian_texts()
    assert len(texts) >= 100
    assert len(set(texts)) == len(texts)


def test_mix_caps_each_source_interleaves_and_is_order_independent():
    groups = {"a": [f"a{i}" for i in range(50)], "b": [f"b{i}" for i in range(5)]}
    m = prose.mix(groups, per_source=10)
    assert len(m) == 15 and sum(t.startswith("b") for t in m) == 5
    assert m[0][0] == "a" and m[1][0] == "b"  # round-robin
    assert prose.mix({"a": groups["a"][::-1], "b": groups["b"]}, per_source=10) == m


def test_top1_by_margin_counts_only_clear_queries():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(40, 8))
    assert top1_by_margin(teacher, teacher, 0.0) == (1.0, 1.0)
    share, agree = top1_by_margin(teacher, teacher + rng.normal(scale=0.3, size=teacher.shape), 0.05)
    assert 0 < share < 1 and agree >= retrieval_agreement(teacher, teacher)[1] - 1
    assert (teacher_margins(teacher) >= 0).all()


def test_passages_join_two_or_three_consecutive_sentences_within_the_word_cap():
    sents = [f"Sentence number {i} has exactly six words." for i in range(7)]
    got = list(prose._units(sents, passages=True))
    assert got == [" ".join(sents[0:3]), " ".join(sents[3:6])]  # the lone seventh is no passage
    assert list(prose._units(sents, passages=False)) == sents
    long = ["Word " * 50 + "end.", "Word " * 50 + "end.", "Short one here is a sentence.", "And another one is here."]
    got = list(prose._units(long, passages=True))
    assert got == [" ".join(long[1:4])] and len(got[0].split()) <= 80  # the first two would make 102 words


def test_passages_from_real_docstrings_are_longer_than_their_sentences():
    sents = prose.docstring_texts(["msgpack", "numpy"], stdlib=False)
    passages = prose.docstring_texts(["msgpack", "numpy"], stdlib=False, passages=True)
    assert len(passages) >= 50
    assert np.mean([len(p.split()) for p in passages]) > 1.8 * np.mean([len(s.split()) for s in sents])
    assert all(p.count(". ") + p.count("? ") + p.count("! ") >= 1 and len(p.split()) <= 80 for p in passages)
