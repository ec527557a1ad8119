"""Network profiles slow a run by at least their analytic network time, and not absurdly more."""

import pytest

from netsim import Profile, Shaper, available_profiles, load_profile, resolve_profile
from secformer.demo import mlp, mlp_inputs
from secformer.launch import run_local


def test_named_profiles_exist_with_issue_values():
    assert {"none", "lan", "wan"} <= set(available_profiles())
    wan, lan = load_profile("wan"), load_profile("lan")
    assert wan.latency == pytest.approx(0.020) and wan.bandwidth == pytest.approx(100e6 / 8)
    assert lan.latency == pytest.approx(0.0001) and lan.bandwidth == pytest.approx(10e9 / 8)
    assert not load_profile("none").shaped


def test_profile_selection_order(monkeypatch, tmp_path):
    monkeypatch.setenv("SECFORMER_NETSIM", "wan")
    assert resolve_profile().name == "wan"
    assert resolve_profile(configured="lan").name == "lan"
    assert resolve_profile("none", "lan").name == "none"
    p = tmp_path / "slow.toml"
    p.write_text("latency_ms = 5\nbandwidth_mbps = 1\n")
    assert resolve_profile(str(p)).latency == pytest.approx(0.005)
    with pytest.raises(ValueError, match="unknown network profile"):
        load_profile("moon")
    (tmp_path / "bad.toml").write_text("latency = 5\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_profile(str(tmp_path / "bad.toml"))


def test_shaper_serialises_frames_fifo():
    s = Shaper(Profile("t", latency=0.01, bandwidth=1000.0))
    assert s.arrival(0.0, 1000) == pytest.approx(1.01)  # 1 s on the wire + 10 ms
    assert s.arrival(0.0, 500) == pytest.approx(1.51)  # queued behind the first frame
    assert s.arrival(5.0, 0) == pytest.approx(5.01)


def test_latency_profile_slows_run_by_rounds_times_latency(tmp_path):
    prof = tmp_path / "slow.toml"
    prof.write_text("latency_ms = 40\nbandwidth_mbps = 0\n")
    in0, in1 = mlp_inputs()
    base = run_local(mlp, in0, in1)
    slow = run_local(mlp, in0, in1, netsim=str(prof))
    s1 = slow.stats[1]
    rounds = s1["rounds"]
    assert rounds == 14  # input 1 + (matmul + truncation) 2 + relu 8 + 2 + reveal 1
    # on-demand dealer requests add a request/response round trip each time P1 needs material
    lower = rounds * 0.040
    analytic = lower + 2 * 0.040 * s1["dealer_frames_recv"] + base.wall_time
    assert slow.wall_time >= lower, (slow.wall_time, lower)
    assert slow.wall_time <= 1.5 * analytic + 0.3, (slow.wall_time, analytic)


def test_bandwidth_profile_charges_bytes(tmp_path):
    prof = tmp_path / "thin.toml"
    prof.write_text("latency_ms = 0\nbandwidth_mbps = 2\n")  # 250 kB/s
    in0, in1 = mlp_inputs()
    run = run_local(mlp, in0, in1, netsim=str(prof))
    s0, s1 = run.stats[0], run.stats[1]
    wire_time = max(s0["online_bytes_sent"], s1["online_bytes_sent"]) / 250e3
    assert run.wall_time >= wire_time, (run.wall_time, wire_time)
    assert run.wall_time <= 3 * (wire_time + s1["dealer_bytes_recv"] / 250e3) + 0.5
