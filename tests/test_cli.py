"""The command line as a newcomer meets it: help and version, input checks before anything heavy,
and a private inference driven exactly as the README does, results read back without secformer."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from secformer import __version__
from secformer.launch import free_ports
from tests.tinybert import make_tiny_bert


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["secformer", *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_bare_command():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"secformer {__version__}"
    r = _cli()
    assert r.returncode == 0 and "usage: secformer" in r.stdout and "demo" in r.stdout and "infer" in r.stdout


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from parties.dealer import build_parser as dealer_parser
    from parties.party import build_parser as party_parser
    from secformer.cli import build_parser

    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {
        "secformer": top,
        **{f"secformer {k}": v for k, v in subs.choices.items()},
        "secformer-dealer": dealer_parser(),
        "secformer-party": party_parser(),
    }


def test_every_option_of_every_command_has_a_help_text():
    missing = [
        f"{name} {'/'.join(a.option_strings) or a.dest}"
        for name, p in _parsers().items()
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())
    ]
    assert missing == []
    for name, p in _parsers().items():
        assert p.description and "``" not in p.description, name  # no raw RST in --help


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny"), layers=1, hidden=32, seed=2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model", "--text", "hi"], "no such directory"),
        (["--text", ""], "text 0 is empty"),
        (["--text", "   "], "text 0 is empty"),
        ([], "needs --text or --texts-file"),
        (["--texts-file", "/nonexistent.txt"], "does not exist"),
        (["--text", "hi", "--output", "out.pickle"], "use a .jsonl, .npy or .npz"),
        (["--text", "hi", "--max-len", "1"], "at least 2"),
    ],
)
def test_client_input_errors_are_reported_before_connecting_or_heavy_imports(tiny, args, message):
    if "--model" not in args:
        args = ["--model", str(tiny), *args]
    t0 = time.monotonic()
    r = _cli("infer", "--party", "1", "--config", "unused.toml", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert time.monotonic() - t0 < 5  # no torch/transformers/numba import, no connection attempt


def test_model_owner_passing_client_options_is_refused(tiny):
    r = _cli("infer", "--party", "0", "--config", "unused.toml", "--model", str(tiny), "--text", "hi")
    assert r.returncode == 2 and "P0 learns no result" in r.stderr


def test_results_files_load_with_numpy_and_json_alone(tmp_path):
    from secformer import results

    res = [
        {
            "outputs": {"embedding": np.full((1, 4), float(i))},
            "stats": {"time": 1.0, "online_bytes_sent": 10, "dealer_bytes_recv": 20, "rounds": 30},
        }
        for i in range(3)
    ]
    texts, tokens = ["a", "b c", "d"], [3, 4, 200]
    for ext in results.FORMATS:
        results.write(str(tmp_path / f"r{ext}"), texts, tokens, 128, res)
    code = f"""
import json, numpy as np
rows = [json.loads(l) for l in open({str(tmp_path / "r.jsonl")!r})]
assert [r["text"] for r in rows] == ["a", "b c", "d"] and rows[2]["truncated"] and rows[2]["tokens"] == 128
assert rows[1]["embedding"] == [[1.0] * 4] and rows[0]["rounds"] == 30
a = np.load({str(tmp_path / "r.npy")!r}, allow_pickle=False)
assert a.shape == (3, 4) and a[2, 0] == 2.0
z = np.load({str(tmp_path / "r.npz")!r}, allow_pickle=False)
assert z["embedding"].shape == (3, 4) and list(z["texts"]) == ["a", "b c", "d"] and list(z["tokens"]) == [3, 4, 128]
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.stdout.strip() == "ok", r.stderr


def _three_roles(tiny: Path, tmp_path: Path, texts: list[str], client_args: list[str]) -> dict[str, tuple[str, str]]:
    """keygen, the dealer and both parties as separate processes, as the README runs them;
    returns each role's (stdout, stderr) after checking that all three exited 0."""
    ports = free_ports(3)
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(
        f'session = "readme-{tmp_path.name}"\n[party0]\nhost = "127.0.0.1"\nport = {ports[0]}\n'
        f'[party1]\nhost = "127.0.0.1"\nport = {ports[1]}\n[dealer]\nhost = "127.0.0.1"\nport = {ports[2]}\n'
        '[network]\nprofile = "none"\nconnect_timeout = 60.0\n'
    )
    assert _cli("keygen", str(tmp_path / "certs"), "--config", str(cfg)).returncode == 0
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    client = tmp_path / "client"
    client.mkdir()  # the client has only config.json and the tokenizer, never the weights
    for f in tiny.iterdir():
        if not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, client / f.name)
    cmds = {
        "dealer": ["secformer-dealer", "--config", str(cfg)],
        "P1": [
            "secformer",
            "infer",
            "--config",
            str(cfg),
            "--party",
            "1",
            "--model",
            str(client),
            "--texts-file",
            str(tmp_path / "texts.txt"),
            "--max-len",
            "64",
            *client_args,
        ],
        "P0": ["secformer", "infer", "--config", str(cfg), "--party", "0", "--model", str(tiny), "--max-len", "64"],
    }
    procs = {
        n: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        for n, c in cmds.items()
    }
    try:
        outs = {n: p.communicate(timeout=240) for n, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
    for n, p in procs.items():
        assert p.returncode == 0, (n, outs[n][1][-2000:])
    return outs


def _plain(tiny: Path, texts: list[str]) -> np.ndarray:
    from secformer.models.forward import run_plain
    from secformer.models.hf import load_weights
    from secformer.models.program import tokenize

    spec, w = load_weights(tiny)
    ids, masks = tokenize(str(tiny), texts, max_len=64)
    return np.stack([run_plain(spec, w, i, m, "secformer")["embedding"][0] for i, m in zip(ids, masks, strict=True)])


@pytest.mark.parametrize("output", ["out.jsonl", "out.npy"])
def test_three_roles_from_the_command_line_as_the_readme_runs_them(tiny, tmp_path, output):
    """keygen, the dealer and both parties as separate processes, a texts file, a results file."""
    texts = ["A man is playing a guitar.", "Privacy keeps the text secret.", ("word " * 300).strip()]
    outs = _three_roles(tiny, tmp_path, texts, ["--output", str(tmp_path / output)])
    assert "text 2 has 302 tokens; only the first 64 are used" in outs["P1"][1]
    ref = _plain(tiny, texts)
    if output.endswith(".jsonl"):
        rows = [json.loads(line) for line in (tmp_path / output).read_text().splitlines()]
        assert [r["text"] for r in rows] == texts and [r["truncated"] for r in rows] == [False, False, True]
        got = np.array([r["embedding"][0] for r in rows])
        assert all(r["rounds"] > 0 and r["online_bytes"] > 0 and r["time_s"] > 0 for r in rows)
    else:
        got = np.load(tmp_path / output, allow_pickle=False)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 5e-3


def test_the_role_entry_points_import_nothing_from_the_launcher():
    """parties/ runs one role each; the in-process launcher (secformer.launch) is not one of them."""
    import ast

    for path in (Path(__file__).parent.parent / "parties").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "secformer.launch" or n.startswith("secformer.launch.") for n in names), path


def test_client_offline_phase_from_the_command_line(tiny, tmp_path):
    """--offline: the second text (same length as the first) has its material fetched before it,
    the client reports its online and offline times apart, and the results equal plaintext."""
    texts = ["A man is playing a guitar.", "A dog is eating a bone."]
    outs = _three_roles(tiny, tmp_path, texts, ["--offline", "--output", str(tmp_path / "out.jsonl")])
    lines = [ln for ln in outs["P1"][0].splitlines() if ln.startswith("query ")]
    assert len(lines) == 2 and all("online, offline" in ln for ln in lines), outs["P1"][0]
    assert "P1 waited 0.00 s for the dealer" in lines[1], lines[1]  # its material came in the offline phase
    got = np.array([json.loads(ln)["embedding"][0] for ln in (tmp_path / "out.jsonl").read_text().splitlines()])
    assert np.abs(got - _plain(tiny, texts)).max() < 5e-3
