"""Offline phase: material for a whole query is fetched ahead of time, in one batch."""

import numpy as np
import pytest

from secformer.launch import run_local
from tests.conftest import check
from tests.programs import streamed_queries, two_queries


def test_prefetched_query_needs_no_dealer_traffic_online_and_is_correct():
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.5, (16, 8))
    x0, x1 = rng.normal(0, 1, (4, 16)), rng.normal(0, 1, (4, 16))
    r = run_local(two_queries, {"w": w}, {"x0": x0, "x1": x1})
    o = r.outputs[1]
    check(o["y0"], np.maximum(x0 @ w, 0), atol=1e-3, msg="query 0 (on demand)")
    check(o["y1"], np.maximum(x1 @ w, 0), atol=1e-3, msg="query 1 (prefetched)")
    kinds = [k for _, k, _ in o["plan"]]
    assert kinds == ["matmul", "trunc", "ltz"], kinds  # relu fuses its product into the comparison
    # the whole batch travelled in one frame before query 1 started ...
    assert o["mid"]["dealer_frames_recv"] - o["before"]["dealer_frames_recv"] == 1
    # ... and query 1 itself waited for no dealer message
    assert o["after"]["dealer_frames_recv"] == o["mid"]["dealer_frames_recv"]
    assert o["after"]["dealer_bytes_recv"] == o["mid"]["dealer_bytes_recv"]


def _relu_chain(x, w):
    h = np.maximum(x @ w, 0)
    return np.maximum(h * h + h, 0)


def test_streamed_queries_find_their_material_waiting_and_are_correct():
    rng = np.random.default_rng(6)
    w = rng.normal(0, 0.5, (16, 8))
    xs = rng.normal(0, 1, (3, 4, 16))
    # query 1: the whole plan in flight; query 2: a 1-byte window (one request ahead at a time)
    r = run_local(streamed_queries, {"w": w, "windows": [256e6, 1]}, {"w": None, "xs": xs, "windows": [256e6, 1]})
    o = r.outputs[1]
    for q in range(3):
        check(o["y"][q], _relu_chain(xs[q], w), atol=2e-3, msg=f"query {q}")
    st = o["stats"]
    waits = [st[q + 1]["dealer_waits"] - st[q]["dealer_waits"] for q in range(3)]
    requests = [st[q + 1]["dealer_requests"] - st[q]["dealer_requests"] for q in range(3)]
    frames = [st[q + 1]["dealer_frames_recv"] - st[q]["dealer_frames_recv"] for q in range(3)]
    assert requests[0] == requests[1] == requests[2] >= 4, requests
    assert waits[0] == requests[0], waits  # on demand: every answer is awaited
    for q in range(3):  # the wait is wall time (concurrent waits count once), within the query's
        waited = st[q + 1]["dealer_wait_time"] - st[q]["dealer_wait_time"]
        assert 0 <= waited <= st[q + 1]["wall_time"] - st[q]["wall_time"]
    assert waits[1] <= 1, waits  # streamed: at most the very first is still on its way
    assert frames[1] <= frames[0], frames  # answers ahead of use share frames
    # streaming changes when material moves, not what moves (fewer frames: fewer header bytes)
    dealer = [st[q + 1]["dealer_bytes_recv"] - st[q]["dealer_bytes_recv"] for q in range(3)]
    assert dealer[1] <= dealer[0] and dealer[2] <= dealer[0], dealer
    assert dealer[1] > 0.9 * dealer[0], dealer


def test_streamed_plan_that_differs_from_the_program_is_refused():
    from secformer import ProtocolError

    rng = np.random.default_rng(7)
    w, xs = rng.normal(0, 0.5, (16, 8)), rng.normal(0, 1, (3, 4, 16))
    inputs = {"windows": [256e6, 256e6], "wrong_plan": True}
    with pytest.raises(ProtocolError, match=r"prefetched material q1/.* was .*program asks"):
        run_local(streamed_queries, {**inputs, "w": w}, {**inputs, "xs": xs})


def test_infer_streams_queries_with_the_length_of_an_earlier_one(tmp_path):
    from secformer.models.forward import run_plain
    from secformer.models.hf import load_weights
    from secformer.models.program import infer, tokenize
    from tests.tinybert import make_tiny_bert

    model = str(make_tiny_bert(tmp_path / "tiny", layers=2, hidden=64, seed=3))
    texts = ["A man is playing a guitar.", "I love pizza!", "A dog is eating a bone."]
    ids, masks = tokenize(model, texts)
    assert len(ids[0]) == len(ids[2]) != len(ids[1])
    inputs = {"model": model, "mode": "secformer"}
    p1 = {**inputs, "texts": texts, "reveal": "embedding,hidden", "plan_cache_dir": str(tmp_path / "plans")}
    r = run_local(infer, {**inputs, "unsafe_reveal": "hidden"}, p1)
    spec, w = load_weights(model)
    res = r.outputs[1]["results"]
    for q in range(3):
        ref = run_plain(spec, w, ids[q], masks[q], "secformer")["hidden"]
        check(res[q]["outputs"]["hidden"], ref, atol=5e-3, msg=f"query {q}")
    st = [x["stats"] for x in res]
    assert st[2]["dealer_requests"] == st[0]["dealer_requests"]
    assert st[0]["dealer_waits"] == st[0]["dealer_requests"]  # on demand: each answer awaited
    assert st[1]["dealer_waits"] == st[1]["dealer_requests"]  # new length: on demand too
    assert st[2]["dealer_waits"] < st[0]["dealer_waits"] / 2, st[2]  # streamed from query 0's plan


def test_a_cached_plan_streams_the_first_query_of_a_later_session(tmp_path):
    """P1 keeps each length's plan on disk: in a new session, even the first query of a length
    finds its dealer material streamed ahead, and the results are unchanged."""
    from secformer.models.program import infer
    from tests.tinybert import make_tiny_bert

    model = str(make_tiny_bert(tmp_path / "tiny", layers=2, hidden=64, seed=4))
    inputs = {"model": model, "mode": "secformer"}
    p1 = {**inputs, "texts": ["A dog is eating a bone."], "plan_cache_dir": str(tmp_path / "plans")}
    first = run_local(infer, inputs, p1).outputs[1]["results"][0]
    assert list((tmp_path / "plans").glob("*.json")), "the plan was saved"
    second = run_local(infer, inputs, p1).outputs[1]["results"][0]
    assert first["stats"]["dealer_waits"] == first["stats"]["dealer_requests"]  # on demand
    assert second["stats"]["dealer_requests"] == first["stats"]["dealer_requests"]
    assert second["stats"]["dealer_waits"] < first["stats"]["dealer_waits"] / 2, second["stats"]
    check(second["outputs"]["embedding"], first["outputs"]["embedding"], atol=2e-3, msg="same result")


def test_plan_cache_keys_plans_by_model_mode_outputs_and_code(tmp_path, monkeypatch):
    from secformer import plans

    plan = [("0", "trunc", {"shape": [3, 4], "bits": 16})]
    a = plans.PlanCache(tmp_path, "model-a", "secformer", "embedding")
    a.save(7, plan)
    assert a.load(7) == plan and a.load(8) is None
    assert plans.PlanCache(tmp_path, "model-a", "puma", "embedding").load(7) is None
    assert plans.PlanCache(tmp_path, "model-b", "secformer", "embedding").load(7) is None
    monkeypatch.setattr(plans, "code_fingerprint", lambda: "other code")
    assert plans.PlanCache(tmp_path, "model-a", "secformer", "embedding").load(7) is None
    a._path(9).write_text("{not json")
    assert a.load(9) is None  # a damaged file is a miss, not an error


def test_infer_offline_phase_leaves_the_online_phase_no_dealer_wait(tmp_path):
    """With ``offline``, each query's material is fetched and drawn before it (query 0's while P0
    loads the model): the online phase then waits for no dealer answer and receives no dealer
    byte, its results equal plaintext, and the offline time is reported apart."""
    from secformer.models.forward import run_plain
    from secformer.models.hf import load_weights
    from secformer.models.program import infer, tokenize
    from tests.tinybert import make_tiny_bert

    model = str(make_tiny_bert(tmp_path / "tiny", layers=2, hidden=64, seed=8))
    texts = ["A dog is eating a bone.", "A man is playing a guitar.", "I love pizza!"]
    inputs = {"model": model, "mode": "secformer", "plan_cache_dir": str(tmp_path / "plans")}
    run_local(infer, inputs, {**inputs, "texts": texts[:1]})  # caches the plan of query 0's length
    # a budget below one query's material: the rest of the plan streams during the query
    p1 = {**inputs, "texts": texts, "offline": True}
    r = run_local(infer, inputs, p1)
    small = run_local(infer, inputs, {**p1, "texts": texts[:1], "offline_memory": 1e5})
    spec, w = load_weights(model)
    ids, masks = tokenize(model, texts)
    res = r.outputs[1]["results"]
    for q in range(3):
        ref = run_plain(spec, w, ids[q], masks[q], "secformer")["embedding"]
        check(res[q]["outputs"]["embedding"], ref, atol=5e-3, msg=f"query {q}")
    st = [x["stats"] for x in res]
    for q in (0, 1):  # cached plan (fetched during the load), then an earlier query's length
        assert st[q]["dealer_requests"] > 10 and st[q]["dealer_waits"] == 0, st[q]
        assert st[q]["dealer_bytes_recv"] == 0 and st[q]["offline_time"] > 0, st[q]
    assert st[2]["dealer_waits"] == st[2]["dealer_requests"] > 0  # a new length and no plan: on demand
    assert r.outputs[0]["results"][0]["stats"]["offline_time"] > 0  # P0 drew its share ahead too
    s = small.outputs[1]["results"][0]["stats"]
    assert s["dealer_waits"] < s["dealer_requests"] / 2, s  # the rest streamed (within the window)
    check(small.outputs[1]["results"][0]["outputs"]["embedding"], res[0]["outputs"]["embedding"], atol=2e-3)


def test_offline_phase_precomputes_p1s_product_with_the_masked_weight_and_stays_exact():
    from tests.programs import owner_precomputed

    rng = np.random.default_rng(9)
    w, x = rng.normal(0, 0.5, (16, 8)), rng.normal(0, 1, (4, 16))
    r = run_local(owner_precomputed, {"w": w}, {"x": x})
    o = r.outputs[1]
    assert o["precomputed"] == 1 and r.outputs[0]["precomputed"] == 0  # P1 only: P0 has no A
    check(o["y0"], x @ w, atol=1e-3, msg="on demand")
    check(o["y1"], x @ w, atol=1e-3, msg="A F computed offline")


def test_offline_phase_sends_p1s_truncation_part_so_online_p1_sends_only_the_masked_input():
    """P1's part z1 + r1 of the output's truncation depends on no input: it travels in the offline
    phase (one 4 x 8 part, 256 B), and online P1 sends 8 B per output element less than on
    demand; the result stays exact."""
    from tests.programs import owner_precomputed

    rng = np.random.default_rng(10)
    w, x = rng.normal(0, 0.5, (16, 8)), rng.normal(0, 1, (4, 16))
    r = run_local(owner_precomputed, {"w": w}, {"x": x})
    o0, o1 = r.outputs[0], r.outputs[1]
    assert o1["parts"] == o0["parts"] == 4 * 8 * 8  # sent by P1, received by P0
    saved = o1["sent"][0] - o1["sent"][1]  # online: no truncation part (and no message header for it)
    assert 4 * 8 * 8 <= saved < 4 * 8 * 8 + 64, o1["sent"]
    assert o0["sent"][0] == o0["sent"][1]  # P0 still answers with one bit per output element
    check(o1["y1"], x @ w, atol=1e-3, msg="truncation part sent offline")


def test_an_offline_phase_longer_than_the_round_timeout_keeps_the_waiting_peer_patient(monkeypatch):
    """P1's offline phase (made to last 2.5 s) sends P0 nothing; with a 1 s round timeout P0, waiting
    at the barrier, would give up, but P1 says it is busy every 0.5 s. Without those signs of life
    the same run fails with the round timeout."""
    import asyncio

    from secformer import PeerError
    from secformer.provider import DealerProvider
    from secformer.session import Session
    from tests.programs import offline_then_query

    slow = DealerProvider.prefetch

    async def prefetch(self, requests, window=64e6):
        if self.party == 1:
            await asyncio.sleep(2.5)
        return await slow(self, requests, window)

    monkeypatch.setattr(DealerProvider, "prefetch", prefetch)
    rng = np.random.default_rng(10)
    w, x0, x1 = rng.normal(0, 0.5, (16, 8)), rng.normal(0, 1, (4, 16)), rng.normal(0, 1, (4, 16))
    r = run_local(offline_then_query, {"w": w}, {"x0": x0, "x1": x1}, round_timeout=1.0)
    check(r.outputs[1]["y1"], np.maximum(x1 @ w, 0), atol=1e-3, msg="after a long offline phase")
    assert r.outputs[1]["offline"] > 2.5

    async def silent(self, work):
        return await work

    monkeypatch.setattr(Session, "_alive_while", silent)
    with pytest.raises(PeerError, match="round timeout"):
        run_local(offline_then_query, {"w": w}, {"x0": x0, "x1": x1}, round_timeout=1.0)


def test_time_a_party_spent_busy_itself_is_not_its_peers_silence():
    """P1 works 2.5 s (round timeout 1 s), then waits for P0's reply: the timeout counts from when
    it started waiting, so the reply arrives instead of a round-timeout error."""
    from tests.programs import busy_then_reply

    r = run_local(busy_then_reply, {"seconds": 2.5}, {"seconds": 2.5}, round_timeout=1.0)
    assert r.outputs[1] == [1, 2, 3]


def test_p0_refuses_malformed_truncation_parts_with_a_clear_error():
    """P0 accepts a part only for a layer it named as held ahead, of that layer's output shape,
    once: a client cannot make the server store more than the material it chose to keep."""
    import asyncio

    from secformer.errors import ProtocolError
    from secformer.protocols import linear

    class Prov:
        def drawn(self, kind):
            return [("q1/7", {"shape_a": [4, 16], "shape_b": [16, 8]}, {})]

        def attach(self, key, name, value):
            self.got = (key, name, value.shape)

    class Rt:
        party, provider = 0, Prov()

        def __init__(self, msg):
            self.msg = msg

        async def transfer(self, sender, arrays):
            return self.msg

    def names(*keys):
        return np.frombuffer("\n".join(keys).encode(), dtype=np.uint8)

    done = np.array([0], dtype=np.int64)
    ok = Rt([done, names("q1/7"), np.zeros((4, 8), np.uint64)])
    assert asyncio.run(linear.send_truncation_parts(ok)) == 256 and ok.provider.got == ("q1/7", "t1", (4, 8))
    for msg, what in (
        ([done, names("q1/7"), np.zeros((4, 9), np.uint64)], "not \\(4, 8\\)"),
        ([done, names("q1/7"), np.zeros((4, 8), np.float64)], "float64"),
        ([done, names("q1/7", "q1/9"), np.zeros((4, 8), np.uint64)], "1 truncation parts for 2 layers"),
        ([done], "malformed"),
        ([done, np.array([255, 254], np.uint8), np.zeros((4, 8), np.uint64)], "malformed"),  # not UTF-8
        ([done, names("q1/8"), np.zeros((4, 8), np.uint64)], "did not name"),
        ([done, names("q1/7", "q1/7"), np.zeros((4, 8), np.uint64), np.zeros((4, 8), np.uint64)], "got twice"),
    ):
        with pytest.raises(ProtocolError, match=what):
            asyncio.run(linear.send_truncation_parts(Rt(msg)))
