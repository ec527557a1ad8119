"""Whole private BERT runs over three processes: kills, orphans and secrets in logs."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from secformer.launch import run_processes, start_processes
from secformer.models.hf import load_weights
from secformer.models.program import tokenize
from tests.conftest import kill_and_check
from tests.tinybert import make_tiny_bert

PROGRAM = "secformer.models.program:infer"
SECRET_TEXT = "Zanzibar quokkas whisper marmalade recipes to the lighthouse keeper."
TEXTS = [SECRET_TEXT, "A man is playing a guitar on the street.", "The weather is lovely today in the park."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tinybert"), layers=2, hidden=64, seed=5)


def _inputs(model: Path, texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    common = {"model": np.array(str(model)), "mode": np.array("secformer")}
    return common, {**common, "texts": np.array(texts)}


def _processes_of(workdir: Path) -> list[int]:
    """Pids of live processes whose command line mentions ``workdir`` (our three roles)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                state = (d / "stat").read_text().split(") ")[1][0]
            except OSError:
                continue
            if str(workdir).encode() in cmd and state != "Z":
                pids.append(int(d.name))
    return pids


@pytest.mark.parametrize("victim", ["P0", "P1", "dealer"])
def test_killing_a_role_at_a_random_point_of_a_bert_run_stops_the_others(victim, tiny, tmp_path):
    """SIGKILL one role at a random moment of a private BERT inference: the other two exit
    non-zero within 5 s, naming the party that died, and no process is left behind."""
    in0, in1 = _inputs(tiny, TEXTS)
    cl = start_processes(PROGRAM, in0, in1, workdir=tmp_path)
    rnd = random.Random(f"kill-{victim}")
    try:
        deadline = time.monotonic() + 90
        while "query 0:" not in cl.log("P1"):
            assert time.monotonic() < deadline, cl.log("P1")
            assert all(p.poll() is None for p in cl.procs.values()), {n: cl.log(n) for n in cl.procs}
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 1.0))  # somewhere in the three queries
        assert all(p.poll() is None for p in cl.procs.values()), "the run ended before the kill"
        logs = kill_and_check(cl, victim)
        assert any(f"{victim} disconnected" in t or f"{victim} connection" in t for t in logs.values()), {
            n: t[-600:] for n, t in logs.items()
        }
        assert _processes_of(tmp_path) == [], "orphan processes"
    finally:
        cl.kill_all()


def test_killing_the_dealer_mid_query_on_a_loaded_machine_stops_both_parties_within_5s(tmp_path):
    """Two other processes keep both cores busy; the dealer is SIGKILLed during a private
    MiniLM query: P0 and P1 exit non-zero within 5 s, naming the dealer."""
    from secformer.models.hf import default_model_dir

    hog = "import time\nt = time.time()\nwhile time.time() - t < 120: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(2)]
    model = str(default_model_dir())
    in0, in1 = _inputs(Path(model), ["A man is playing a guitar on the street. " * 6] * 3)
    cl = start_processes(PROGRAM, in0, in1, workdir=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "query 0:" not in cl.log("P1"):
            assert time.monotonic() < deadline, cl.log("P1")
            assert all(p.poll() is None for p in cl.procs.values()), {n: cl.log(n) for n in cl.procs}
            time.sleep(0.02)
        time.sleep(0.5)
        assert all(p.poll() is None for p in cl.procs.values()), "the run ended before the kill"
        logs = kill_and_check(cl, "dealer", limit=5.0)
        assert all("dealer" in t for t in logs.values()), {n: t[-400:] for n, t in logs.items()}
    finally:
        cl.kill_all()
        for h in hogs:
            h.kill()


def test_roles_die_with_their_launcher(tmp_path):
    """The launcher killed with SIGKILL (no cleanup possible): its three roles go too."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from secformer.launch import start_processes
        cl = start_processes("tests.programs:long_loop", workdir={str(tmp_path)!r})
        print(" ".join(str(p.pid) for p in cl.procs.values()), flush=True)
        time.sleep(120)
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        pids = [int(p) for p in launcher.stdout.readline().split()]
        assert len(pids) == 3
        time.sleep(1.0)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 5
        while _processes_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_of(tmp_path) == [], "roles outlived their launcher"
    finally:
        for pid in _processes_of(tmp_path):
            subprocess.run(["kill", "-9", str(pid)], check=False)


def test_logs_of_a_full_debug_run_hold_no_secret(tiny, tmp_path):
    """A whole private BERT run at DEBUG level, three processes: no log line holds the input
    text, its token ids, a weight, the output or a key; P0 and the dealer never see the output."""
    in0, in1 = _inputs(tiny, TEXTS[:1])
    run = run_processes(PROGRAM, in0, in1, workdir=tmp_path, log_level="DEBUG", timeout=300)
    logs = {n: (tmp_path / f"{n}.err").read_text() for n in ("P0", "P1", "dealer")}
    assert all(len(t.splitlines()) > 20 for t in logs.values()), "DEBUG logging is not on"
    assert "DEBUG" in logs["P1"] and " frame " in logs["P1"]
    everything = "\n".join(logs.values())
    secrets = [SECRET_TEXT, *[w for w in SECRET_TEXT.strip(".").split() if len(w) > 3]]
    ids, _ = tokenize(str(tiny), [SECRET_TEXT])
    secrets += [str(ids[0].tolist()), " ".join(map(str, ids[0][1:-1]))]
    _, w = load_weights(tiny)
    tok_row = np.asarray(w["emb.word"], dtype=np.float64)[int(ids[0][1])]  # the secret's first token
    picked = [*tok_row[:4], *(np.asarray(w[n], dtype=np.float64).ravel()[1000] for n in ("L0.qkv.w", "L1.ff2.w"))]
    assert all(abs(v) > 1e-4 for v in picked)
    for v in picked:
        secrets += [repr(float(v)), f"{v:.6f}", f"{v:.5g}"]
    emb = run.outputs[1]["results"][0]["outputs"]["embedding"][0]
    outputs = [repr(float(v)) for v in emb[:8]] + [f"{v:.6f}" for v in emb[:8]]
    for s in secrets:
        assert s.lower() not in everything.lower(), f"secret {s!r} found in a log"
    for s in outputs:
        assert s not in logs["P0"] + logs["dealer"], f"P1's output {s!r} in P0's or the dealer's log"
    for key_name in ("prg_key", "pair_key"):
        assert key_name not in everything, f"{key_name} in a log"
