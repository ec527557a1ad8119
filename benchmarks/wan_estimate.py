"""Estimate a query's time under another network profile from a measured run, and check the
estimate against runs measured under that profile.

    python -m benchmarks.wan_estimate raw.jsonl --to wan

``raw.jsonl`` holds rows written by ``python -m benchmarks.bert ... --json raw.jsonl``. For each
row measured under ``--from`` (default ``lan``), the estimate under ``--to`` keeps the measured
compute and replaces the network terms of the cost model that the per-op tables validate
(docs/BENCHMARKS.md):

    t_to = t_from + rounds (lat_to - lat_from) + (B + D) (1/bw_to - 1/bw_from)

with B the online bytes one party sends (one direction of the P0-P1 link) and D the dealer bytes
P1 receives. On demand, the dealer's material is fetched when a round needs it, so its transfer
is on the critical path and adds to the online transfer. Where a row was also measured under
``--to``, the measured time and the ratio estimate / measured are printed next to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from netsim import load_profile


def estimate(query: dict, src: str, dst: str) -> float:
    """Query time under profile ``dst`` from its stats measured under ``src``."""
    a, b = load_profile(src), load_profile(dst)
    nbytes = query["online_bytes_sent"] + query["dealer_bytes_recv"]
    net = b.transfer_time(nbytes) - a.transfer_time(nbytes)
    return query["time"] + query["rounds"] * (b.latency - a.latency) + net


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", nargs="+", help="JSON lines from benchmarks.bert --json")
    ap.add_argument("--from", dest="src", default="lan")
    ap.add_argument("--to", dest="dst", default="wan")
    a = ap.parse_args()
    rows = [json.loads(line) for path in a.raw for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("material", "demand") == "demand"]  # on-demand queries only
    measured = {(r["model"], r["seq"], r["mode"]): r for r in rows if r["profile"] == a.dst}
    src, dst = a.src, a.dst
    print(f"| model | seq | mode | {src} measured (s) | {dst} estimated (s) | {dst} measured (s) | est. / measured |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["profile"] != a.src:
            continue
        est = estimate(r["query"], a.src, a.dst)
        m = measured.get((r["model"], r["seq"], r["mode"]))
        got = f"{m['query']['time']:.1f} | {est / m['query']['time']:.2f}" if m else "not run | "
        print(f"| {r['model']} | {r['seq']} | {r['mode']} | {r['query']['time']:.1f} | {est:.1f} | {got} |")


if __name__ == "__main__":
    main()
