"""P0, P1 and the dealer as separate OS processes over TCP."""

import time
from pathlib import Path

import numpy as np
import pytest

from secformer.demo import mlp_inputs, mlp_plain
from secformer.launch import ProcessFailedError, run_processes, start_processes
from tests.conftest import check, kill_and_check


def test_three_processes_compute_private_mlp_matching_plaintext():
    in0, in1 = mlp_inputs(3)
    run = run_processes("secformer.demo:mlp", in0, in1, timeout=120)
    assert run.outputs[0] is None, "P0 must not learn the output"
    # x ~ N(0,1), |W| ~ 0.3: two matmuls of 16 and 32 terms with encoding/truncation errors
    check(run.outputs[1], mlp_plain(in0["w1"], in0["w2"], in1["x"]), atol=5e-4, msg="private MLP")
    s0, s1 = run.stats[0], run.stats[1]
    assert s0["rounds"] == s1["rounds"] == 14  # input 1 + (matmul + truncation) 2 + relu 8 + 2 + reveal 1
    assert s1["dealer_bytes_recv"] > 0 and s0["dealer_bytes_recv"] < 2000, "P0's material is seeded"


@pytest.mark.parametrize("victim", ["P1", "P0", "dealer"])
def test_killing_one_process_mid_run_stops_the_others_within_5s(victim, tmp_path):
    marker = tmp_path / "marker"
    cl = start_processes("tests.programs:long_loop", workdir=tmp_path, extra_env={"SECFORMER_TEST_MARKER": str(marker)})
    try:
        deadline = time.monotonic() + 60
        while not (Path(f"{marker}.0").exists() and Path(f"{marker}.1").exists()):
            assert time.monotonic() < deadline, "parties never reached the loop: " + cl.log("P0")
            assert all(p.poll() is None for p in cl.procs.values()), {n: cl.log(n) for n in cl.procs}
            time.sleep(0.05)
        logs = kill_and_check(cl, victim)
        for log in logs.values():
            assert "disconnected" in log or "aborted" in log or "connection" in log, log
        others = list(logs)
        # the message names the party that died (directly, or via the abort of the party that saw it)
        named = "dealer" if victim == "dealer" else victim
        assert any(named in cl.log(n) for n in others), {n: cl.log(n) for n in others}
    finally:
        cl.kill_all()


def test_failed_process_run_reports_each_exit_code(tmp_path):
    with pytest.raises(ProcessFailedError) as e:
        run_processes("tests.programs:shape_mismatch", workdir=tmp_path, timeout=60)
    assert set(e.value.codes) == {"P0", "P1", "dealer"}
    assert all(c != 0 for c in e.value.codes.values())
    assert "P0 has shape (3, 4), P1 expects (4, 3)" in e.value.stderr["P1"]
    assert np.all([("P1" in e.value.stderr[n]) for n in ("P0", "dealer")])
