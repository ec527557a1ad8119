"""A model server under load: queries per minute and latency with 1, 2, 4 clients.

    python -m benchmarks.serve --models minilm,base --clients 1,2,4 --queries 6 --netsim lan

For each model the dealer service (``secformer-dealer --serve``) and the server (``secformer
serve``) start once as processes; then, for each client count, that many client processes
(the Python :class:`secformer.client.Client`) connect at once and each sends ``--queries``
queries one after another (one text of exactly ``--seq`` tokens per query: a long paragraph cut
there, so every query has the same shape). Reported per (model, clients): session set-up (the
server's public files and the masking of its weights for the session), the first query of a
session and the later ones (p50, p90), and throughput: queries per minute over the time all
clients were querying. Every link is shaped by ``--netsim``. All processes share this machine's
cores, so with more clients each query slows: the numbers say what one 2-core host serves.
Plans (which material a query needs) are cached per run in a fresh directory: the first
session's first query runs without one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import machine, peak_rss, today
from secformer.models.hf import TOKENIZER_FILES

PARAGRAPH = (
    "Secure multi-party computation lets a client and a model owner evaluate a transformer together "
    "without either of them seeing the other's secret: the client keeps its text, the owner keeps its "
    "weights, and a dealer hands out correlated randomness ahead of time so that the online phase needs "
    "only cheap local arithmetic and a few rounds of messages. The expensive parts are the non-linear "
    "layers, which is why SecFormer replaces softmax by a quadratic and approximates GeLU with a Fourier "
    "series on a bounded interval, while layer normalisation uses Goldschmidt's method for the inverse "
    "square root. Each of these needs comparisons, multiplications and truncations on secret shares, "
    "and every one of them costs bytes on the wire and rounds of latency between the two parties. "
)


def model_dir(name: str, root: Path) -> Path:
    from secformer.models.hf import default_model_dir

    if name == "minilm":
        return default_model_dir()
    from benchmarks.bert import make_model

    d = make_model(name, root)
    for f in TOKENIZER_FILES:  # BERT's uncased vocabulary, as MiniLM's tokenizer has it
        if not (d / f).exists() and (default_model_dir() / f).exists():
            shutil.copy(default_model_dir() / f, d / f)
    return d


def client_main(a: argparse.Namespace) -> None:
    """One client process: connect, ``--queries`` queries one by one, write timings as JSON."""
    from secformer.client import Client

    out: dict = {"start": time.time()}
    t0 = time.perf_counter()
    with Client(a.config, netsim=a.netsim, max_len=a.seq, weights_memory=a.weights_memory * 1e9) as c:
        out["setup_s"] = time.perf_counter() - t0
        out["query_start"] = time.time()
        lat, online = [], []
        for i in range(a.queries):
            t = time.perf_counter()
            (r,) = c.query([f"{i}. {PARAGRAPH * 4}"])
            lat.append(time.perf_counter() - t)
            online.append(r["stats"]["time"])
            if r["outputs"]["embedding"].size != c.spec.hidden:
                raise SystemExit("unexpected result shape")
        out.update(end=time.time(), latency_s=lat, in_query_s=online)
    out["peak_rss"] = peak_rss(os.getpid())
    Path(a.out).write_text(json.dumps(out))


def _wait_listening(conf: Path, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        r = subprocess.run(
            [sys.executable, "-m", "secformer.cli", "status", "--config", str(conf), "--connect-timeout", "2"],
            capture_output=True,
        )
        if r.returncode == 0:
            return
        time.sleep(1.0)
    raise SystemExit("server did not start listening")


@contextlib.contextmanager
def served(
    work: Path, model: str | Path, netsim: str = "none", args: tuple[str, ...] = (), dealer_args: tuple[str, ...] = ()
) -> Iterator[tuple[Path, dict]]:
    """The dealer service and ``secformer serve --model model`` as processes, with a fresh CA and
    cluster file in ``work``; yields (cluster.toml, environment for clients), then drains both
    (SIGTERM) and checks that they exit 0."""
    from secformer.launch import local_cluster
    from secformer.tls import keygen, tls_config_for

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keygen(work / "certs", days=1)
    cfg = local_cluster(session="bench", connect_timeout=60.0, round_timeout=600.0)
    cfg.tls = tls_config_for(work / "certs")
    conf = work / "cluster.toml"
    conf.write_text(cfg.to_toml())
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "SECFORMER_CACHE": str(work / "cache")}
    net = ("--netsim", netsim)
    cmds = {
        "dealer": [sys.executable, "-m", "parties.dealer", "--config", str(conf), "--serve", *net, *dealer_args],
        "server": [
            sys.executable,
            "-m",
            "secformer.cli",
            "serve",
            "--config",
            str(conf),
            "--model",
            str(model),
            *net,
            *args,
        ],
    }
    procs = {
        n: subprocess.Popen(c, stdout=(work / f"{n}.log").open("wb"), stderr=subprocess.STDOUT, env=env)
        for n, c in cmds.items()
    }
    try:
        _wait_listening(conf, procs["server"], work / "server.log", 600)
        env["_PIDS"] = json.dumps({n: p.pid for n, p in procs.items()})
        yield conf, env
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for n, p in procs.items():
            if p.wait(120) != 0:
                raise SystemExit(f"{n} did not drain cleanly:\n{(work / f'{n}.log').read_text()[-2000:]}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()


def run_model(
    name: str,
    clients: list[int],
    queries: int,
    seq: int,
    netsim: str,
    root: Path,
    memory: float = 0,
    weights: float = 3,
    stagger: float = 0,
) -> list[dict]:
    """``memory``: the dealer's GB for the sessions' masks (0: its default); ``weights``: GB of
    masked weights a client keeps pre-split (on a shared machine, many clients need less);
    ``stagger``: seconds between clients' starts."""
    work = root / f"serve-{name}"
    rows = []
    n_max = str(max(clients))
    dealer_args = ("--max-sessions", n_max, "--memory", str(memory)) if memory else ()
    with served(work, model_dir(name, root), netsim, ("--max-sessions", n_max), dealer_args) as (conf, env):
        for n in clients:
            procs = []
            for k in range(n):
                if k and stagger:  # one session set-up at a time (each masks the whole model)
                    time.sleep(stagger)
                out = work / f"c{n}-{k}.json"
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.serve",
                    "--client",
                    "--config",
                    str(conf),
                    "--netsim",
                    netsim,
                    "--queries",
                    str(queries),
                    "--seq",
                    str(seq),
                    "--out",
                    str(out),
                    "--weights-memory",
                    str(weights),
                ]
                procs.append(
                    (
                        out,
                        subprocess.Popen(
                            cmd, stdout=out.with_suffix(".log").open("wb"), stderr=subprocess.STDOUT, env=env
                        ),
                    )
                )
            for out, p in procs:
                if p.wait(7200) != 0:
                    raise SystemExit(f"client failed:\n{(out.with_suffix('.log')).read_text()[-3000:]}")
            res = [json.loads(out.read_text()) for out, _ in procs]
            first = [r["latency_s"][0] for r in res]
            later = np.array([x for r in res for x in r["latency_s"][1:]])
            span = max(r["end"] for r in res) - min(r["query_start"] for r in res)
            pids = json.loads(env["_PIDS"])
            row = {
                "model": name,
                "clients": n,
                "queries": n * queries,
                "seq": seq,
                "netsim": netsim,
                "setup_s": float(np.mean([r["setup_s"] for r in res])),
                "first_s": float(np.mean(first)),
                "p50_s": float(np.percentile(later, 50)) if later.size else None,
                "p90_s": float(np.percentile(later, 90)) if later.size else None,
                "qpm": n * queries / span * 60,
                # peak resident memory so far (GB): server and dealer since their start, each client
                "rss_server_gb": peak_rss(pids["server"]) / 1e9,
                "rss_dealer_gb": peak_rss(pids["dealer"]) / 1e9,
                "rss_client_gb": max(r.get("peak_rss", 0) for r in res) / 1e9,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def vs_infer(rounds: int, texts: int, seq: int, netsim: str, root: Path) -> None:
    """The same MiniLM texts through ``infer`` (three fresh processes) and through a session of a
    running server, interleaved: what serving adds or saves per query."""
    from secformer.launch import run_processes
    from secformer.models.hf import default_model_dir

    work = root / "vs-infer"
    m = str(default_model_dir())
    ts = [f"{i}. {PARAGRAPH * 4}" for i in range(texts)]
    code = (
        "import json, sys; from secformer.client import Client\n"
        f"with Client('CONF', netsim={netsim!r}, max_len={seq}) as c:\n"
        f"    print(json.dumps([r['stats']['time'] for r in c.query({ts!r})]))\n"
    )
    with served(work, m, netsim) as (conf, env):
        code = code.replace("CONF", str(conf))
        print("\n| round | infer: per query (s) | session: per query (s) |\n|---|---|---|")
        for r in range(rounds):
            run = run_processes(
                "secformer.models.program:infer",
                {"model": m, "mode": "secformer"},
                {"model": m, "mode": "secformer", "texts": ts, "max_len": seq},
                netsim=netsim,
            )
            a = [x["stats"]["time"] for x in run.outputs[1]["results"]]
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            b = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r} | {', '.join(f'{x:.2f}' for x in a)} | {', '.join(f'{x:.2f}' for x in b)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm", help="minilm, base (comma-separated)")
    ap.add_argument("--clients", default="1,2,4")
    ap.add_argument("--queries", type=int, default=6, help="queries per client, one after another")
    ap.add_argument("--seq", type=int, default=0, help="tokens per query (default: 32 for minilm, 128 for base)")
    ap.add_argument("--netsim", default="lan")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--vs-infer", type=int, default=0, help="instead: N interleaved rounds of infer against a session (MiniLM)"
    )
    ap.add_argument("--dealer-memory", type=float, default=0, help="GB the dealer keeps of the sessions' masks")
    ap.add_argument("--weights-memory", type=float, default=3, help="GB of masked weights a client keeps pre-split")
    ap.add_argument("--stagger", type=float, default=0, help="seconds between clients' starts (0: all at once)")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        client_main(a)
        return
    root = Path(a.workdir or tempfile.mkdtemp(prefix="secformer-serve-"))
    print(f"# {machine()}, {today()}; netsim {a.netsim}; {a.queries} queries per client")
    if a.vs_infer:
        vs_infer(a.vs_infer, 4, a.seq or 32, a.netsim, root)
        return
    rows = []
    for name in a.models.split(","):
        seq = a.seq or (32 if name == "minilm" else 128)
        rows += run_model(
            name,
            [int(c) for c in a.clients.split(",")],
            a.queries,
            seq,
            a.netsim,
            root,
            a.dealer_memory,
            a.weights_memory,
            a.stagger,
        )
    print(
        "\n| model | seq | clients | session set-up (s) | first query (s) | later p50 (s) | later p90 (s) "
        "| queries/min | peak RSS GB: server, dealer, a client |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['seq']} | {r['clients']} | {r['setup_s']:.1f} | {r['first_s']:.2f} | "
            f"{r['p50_s']:.2f} | {r['p90_s']:.2f} | {r['qpm']:.1f} | "
            f"{r['rss_server_gb']:.1f}, {r['rss_dealer_gb']:.1f}, {r['rss_client_gb']:.1f} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
