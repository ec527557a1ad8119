"""Loopback stream throughput with and without TLS (the links' raw cost, no protocol).

    python -m benchmarks.tls_throughput [--mb 512]

One writer, one reader, 16 MiB writes, on uvloop and on asyncio's loop; TLS 1.3 with the same
contexts the roles use (mutual authentication, certificates from ``secformer.tls.keygen``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from benchmarks.common import machine, today
from secformer.tls import client_context, keygen, server_context, tls_config_for

CHUNK = 16 << 20


async def _stream(total: int, tls: bool, certs: str) -> float:
    cfg = tls_config_for(certs)
    sctx = server_context(cfg, 1) if tls else None
    cctx = client_context(cfg, 0) if tls else None
    got = 0
    done = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal got
        while got < total:
            d = await r.read(1 << 22)
            if not d:
                break
            got += len(d)
        done.set()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx, limit=1 << 26)
    port = srv.sockets[0].getsockname()[1]
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx, server_hostname="party1" if tls else None)
    payload = os.urandom(CHUNK)
    t0 = time.perf_counter()
    for _ in range(total // CHUNK):
        w.write(payload)
        await w.drain()
    await done.wait()
    dt = time.perf_counter() - t0
    w.close()
    srv.close()
    return total / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    a = ap.parse_args()
    total = a.mb << 20
    print(f"# TLS throughput, {today()}\n# machine: {machine()}")
    print(f"# command: python -m benchmarks.tls_throughput --mb {a.mb}\n")
    print("| loop | plaintext MB/s | TLS 1.3 MB/s | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as certs:
        keygen(certs)
        import uvloop

        for name, run in (("uvloop", uvloop.run), ("asyncio", asyncio.run)):
            plain = run(_stream(total, False, certs))
            tls = run(_stream(total, True, certs))
            print(f"| {name} | {plain:.0f} | {tls:.0f} | {plain / tls:.2f} |")


if __name__ == "__main__":
    main()
