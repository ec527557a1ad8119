"""Offline phase: material for a whole query is fetched ahead of time, in one batch."""

import numpy as np

from secformer.launch import run_local
from tests.conftest import check
from tests.programs import two_queries


def test_prefetched_query_needs_no_dealer_traffic_online_and_is_correct():
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.5, (16, 8))
    x0, x1 = rng.normal(0, 1, (4, 16)), rng.normal(0, 1, (4, 16))
    r = run_local(two_queries, {"w": w}, {"x0": x0, "x1": x1})
    o = r.outputs[1]
    check(o["y0"], np.maximum(x0 @ w, 0), atol=1e-3, msg="query 0 (on demand)")
    check(o["y1"], np.maximum(x1 @ w, 0), atol=1e-3, msg="query 1 (prefetched)")
    kinds = [k for _, k, _ in o["plan"]]
    assert kinds == ["matmul", "ltz"], kinds  # relu fuses its product into the comparison
    # the whole batch travelled in one frame before query 1 started ...
    assert o["mid"]["dealer_frames_recv"] - o["before"]["dealer_frames_recv"] == 1
    # ... and query 1 itself waited for no dealer message
    assert o["after"]["dealer_frames_recv"] == o["mid"]["dealer_frames_recv"]
    assert o["after"]["dealer_bytes_recv"] == o["mid"]["dealer_bytes_recv"]
