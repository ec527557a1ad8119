"""Private BERT inference end to end: BERT-base / BERT-large shapes, random weights.

    python -m benchmarks.bert --models base --seq 128 --modes secformer,puma,crypten,mpcformer --profiles lan

Each (model, seq, mode, profile) runs as dealer, P0 and P1 (three OS processes, loopback TCP,
netsim on every link): P0 loads a HF BertModel directory written here from ``BertConfig``
defaults (base) or the large config with random weights, masks it once, then runs one query of
``seq`` tokens. Reported: one-off load (time, bytes), per query time, online and dealer bytes,
rounds, peak resident memory per process, and the per-op-type breakdown. ``--plot`` writes the
stacked breakdown per mode to docs/bert_breakdown.png.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import cpu_seconds, machine, peak_rss, today
from secformer.launch import ProcessFailedError, run_processes

CONFIGS = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
ROUND_TIMEOUT = [120.0]  # --round-timeout
CATS = ("embedding", "linear", "softmax", "gelu", "layernorm", "tanh")


def make_model(name: str, root: Path) -> Path:
    """A HF BertModel directory with random weights (no download)."""
    d = root / f"bert-{name}"
    if (d / "config.json").exists():
        return d
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**CONFIGS[name])).eval().save_pretrained(d)
    return d


def run(
    model: str,
    seq: int,
    mode: str,
    profile: str,
    root: Path,
    offline: bool = False,
    tls: bool = True,
    stream: bool = False,
    cprofile: str | None = None,
) -> dict:
    d = make_model(model, root)
    nq = 2 if offline or stream else 1
    ids = np.random.default_rng(seq).integers(1000, 29000, (nq, seq))
    common = {"model": np.array(str(d)), "mode": np.array(mode), "offline": np.array(offline)}
    common["stream"] = np.array(stream)
    if cprofile:
        os.makedirs(cprofile, exist_ok=True)
        common["cprofile"] = np.array(os.path.abspath(cprofile))
    peaks: dict[str, int] = {}
    cpu: dict[str, float] = {}  # CPU seconds of each role over the whole run (last poll before it exits)
    from secformer import launch

    orig = launch.Cluster.wait

    def wait(self, timeout):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            for n, p in self.procs.items():
                if p.poll() is None:
                    peaks[n] = max(peaks.get(n, 0), peak_rss(p.pid))
                    cpu[n] = max(cpu.get(n, 0.0), cpu_seconds(p.pid))
            time.sleep(0.2)
        return {n: p.poll() for n, p in self.procs.items()}

    launch.Cluster.wait = wait
    try:
        r = run_processes(
            "tests.programs:model_queries",
            {**common, "masks": np.ones((nq, seq))},
            {**common, "masks": np.ones((nq, seq)), "ids": ids},
            netsim=profile,
            timeout=7200,
            cfg=launch.local_cluster(netsim=profile, insecure=not tls, round_timeout=ROUND_TIMEOUT[0]),
        )
    finally:
        launch.Cluster.wait = orig
    o = r.outputs[1]
    q = o["results"][-1]["stats"]  # with --offline / --stream: the second query
    # traffic is not symmetric (P1 alone sends the masked activations of the linear layers)
    q0 = r.outputs[0]["results"][-1]["stats"]
    q["online_bytes_both"] = q["online_bytes_sent"] + q0["online_bytes_sent"]
    q["cpu_p0"], q["cpu_p1"] = q0.get("cpu_time", 0.0), q.get("cpu_time", 0.0)  # where the time goes, per role
    od = o["results"][0]["stats"]
    od["cpu_p0"], od["cpu_p1"] = r.outputs[0]["results"][0]["stats"].get("cpu_time", 0.0), od.get("cpu_time", 0.0)
    return {"load": o["load"], "query": q, "on_demand": od, "peaks": peaks, "cpu_run": cpu}


def print_profiles(where: str, top: int = 15) -> None:
    """Each party's functions by own CPU time in its profiled query (the last run's)."""
    import pstats

    for party in (0, 1):
        path = Path(where) / f"P{party}.prof"
        if not path.exists():
            continue
        st = pstats.Stats(str(path))
        total = st.total_tt
        rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
        print(f"\n| P{party}: function (file:line) | own CPU (s) | share of {total:.2f} s | calls |\n|---|---|---|---|")
        for (file, line, fn), (_, calls, tt, _, _) in rows:
            print(f"| {fn} ({Path(file).name}:{line}) | {tt:.2f} | {tt / total:.0%} | {calls} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="base")
    ap.add_argument("--seq", default="128")
    ap.add_argument("--modes", default="secformer,puma,crypten,mpcformer")
    ap.add_argument("--profiles", default="lan")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "secformer-bench-models"))
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--offline", action="store_true", help="second query with all material prefetched (online time)")
    ap.add_argument("--stream", action="store_true", help="second query with its material streamed ahead of use")
    ap.add_argument("--json", default=None, help="append raw results here")
    ap.add_argument("--transport", default="tls", help="tls, insecure (plaintext TCP) or both: tls,insecure")
    ap.add_argument("--round-timeout", type=float, default=120.0, help="seconds without data before a role gives up")
    ap.add_argument(
        "--cprofile",
        default=None,
        help="directory: each party profiles its last query (cProfile) and the top functions by own CPU are printed",
    )
    a = ap.parse_args()
    ROUND_TIMEOUT[0] = a.round_timeout
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(os.sys.argv[1:])
    print(f"# private BERT, {today()}\n# machine: {machine()}\n# command: python -m benchmarks.bert {cmd}\n")
    print(
        "| model | seq | mode | profile | query time (s) | online MB | dealer MB | rounds | load (s) | load MB "
        "| peak RSS P0/P1/dealer (GB) | CPU P0/P1 (s) | P1 waits for dealer (s) | "
        + " | ".join(f"{c} s / MB / rounds" for c in CATS[:-1])
        + " |"
    )
    print("|" + "---|" * (13 + len(CATS) - 1))
    if a.offline:
        print("| (online time: material of the query prefetched in one batch beforehand; see the offline column) |")
    if a.stream:
        print("| (second query, its material streamed ahead of use; the first query's time, on demand, in brackets) |")
    rows = []
    for model in a.models.split(","):
        for seq in (int(s) for s in a.seq.split(",")):
            for mode in a.modes.split(","):
                for prof, transport in ((p, t) for p in a.profiles.split(",") for t in a.transport.split(",")):
                    try:
                        r = run(model, seq, mode, prof, root, a.offline, transport == "tls", a.stream, a.cprofile)
                    except ProcessFailedError as exc:
                        where = f"{model} | {seq} | {mode} | {prof} ({transport})"
                        print(f"| {where} | failed: {str(exc)[:200]} |", flush=True)
                        continue
                    q, ld, pk = r["query"], r["load"], r["peaks"]
                    qt = f"{q['time']:.2f}"
                    od, cr = r["on_demand"], r["cpu_run"]
                    run_cpu = "/".join(f"{cr.get(n, 0):.0f}" for n in ("P0", "P1", "dealer"))
                    if a.offline:
                        qt += (
                            f" (on demand {od['time']:.2f}, CPU P0/P1 {od['cpu_p0']:.1f}/{od['cpu_p1']:.1f}; "
                            f"offline {q.get('offline_time', 0):.2f}; whole run CPU P0/P1/dealer {run_cpu} s)"
                        )
                    elif a.stream:
                        qt += (
                            f" (on demand {od['time']:.2f}; P1 waited for the dealer "
                            f"{q.get('dealer_wait_time', 0):.2f} s, on demand {od.get('dealer_wait_time', 0):.2f} s; "
                            f"whole run CPU P0/P1/dealer {run_cpu} s)"
                        )
                    else:
                        qt += f" (CPU P0/P1 {od['cpu_p0']:.1f}/{od['cpu_p1']:.1f}; run CPU P0/P1/dealer {run_cpu})"
                    cats = q["by_category"]
                    cells = " | ".join(
                        f"{cats.get(c, {}).get('time', 0):.2f} / {cats.get(c, {}).get('bytes', 0) / 1e6:.1f} / "
                        f"{cats.get(c, {}).get('rounds', 0)}"
                        for c in CATS[:-1]
                    )
                    gb = "/".join(f"{pk.get(n, 0) / 2**30:.1f}" for n in ("P0", "P1", "dealer"))
                    print(
                        f"| {model} | {seq} | {mode} | {prof} ({transport}) | {qt} "
                        f"| {q['online_bytes_both'] / 1e6:.1f} | {q['dealer_bytes_recv'] / 1e6:.1f} "
                        f"| {q['rounds']} | {ld['time']:.1f} | {ld['online_bytes_sent'] * 2 / 1e6:.0f} | {gb} "
                        f"| {q['cpu_p0']:.1f}/{q['cpu_p1']:.1f} | {q['dealer_wait_time']:.1f} | {cells} |",
                        flush=True,
                    )
                    material = "offline" if a.offline else "stream" if a.stream else "demand"
                    rows.append({"model": model, "seq": seq, "mode": mode, "profile": prof, "material": material, **r})
    if a.cprofile:
        print_profiles(a.cprofile)
    if a.json:
        with open(a.json, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str) + "\n")
    if a.plot and rows:
        plot(rows, Path("docs/bert_breakdown.png"))


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{r['mode']}\n{r['model']} L={r['seq']}\n{r['profile']}" for r in rows]
    bottom = np.zeros(len(rows))
    for c in CATS:
        vals = np.array([r["query"]["by_category"].get(c, {}).get("time", 0.0) for r in rows])
        ax.bar(labels, vals, bottom=bottom, label=c)
        bottom += vals
    ax.set_ylabel("time per query (s), by op type")
    ax.set_title("Private BERT: per-op-type breakdown")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
