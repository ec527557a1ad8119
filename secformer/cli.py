"""``secformer`` command.

secformer demo      private sentence embedding with all-MiniLM-L6-v2, three local processes
secformer infer     one party of a private inference on real hosts (cluster.toml)
secformer keygen    a cluster CA and one TLS key/certificate per role
secformer distill   distil a HF model into its 2Quad (SecFormer) student
secformer evaluate  teacher vs student: embeddings/retrieval or accuracy, plaintext and private
secformer corpus    write real English text (WordNet, docstrings, Debian, licences) to a text file
secformer mlp-demo  the runtime demo: a private 2-layer MLP
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from secformer.models import MODES

DEFAULT_TEXTS = ["A man is playing a guitar on the street.", "Privacy-preserving inference keeps the text secret."]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


MODE_NOTES = {
    "puma": "exact-function approximations (PUMA's GeLU and exp, SecFormer's LayerNorm): no distillation needed",
    "crypten": "CrypTen's approximations: no distillation needed, most rounds",
    "secformer": "SecFormer: 2Quad softmax and Fourier GeLU; fewest rounds and bytes, but 2Quad changes the model",
    "mpcformer": "MPCFormer: 2Quad softmax and Quad GeLU; changes the model even more",
}


def _run_mode(model: str, mode: str, texts: list[str], args: argparse.Namespace) -> Any:
    """One private run (dealer, P1, P0 as processes); None (after saying why) if it failed."""
    from secformer.launch import ProcessFailedError, run_processes
    from secformer.models.hf import model_mode

    common = {"model": np.array(model), "mode": np.array(mode)}
    try:
        return run_processes(
            "secformer.models.program:infer",
            common,
            {**common, "texts": np.array(texts), "progress": np.array(True)},
            netsim=args.netsim,
            timeout=args.timeout,
            echo="P1",
        )
    except ProcessFailedError as exc:
        cause = next(
            (
                ln.split("OutOfRangeError: ", 1)[1]
                for t in exc.stderr.values()
                for ln in t.splitlines()
                if "error: OutOfRangeError: " in ln
            ),
            None,
        )
        if cause is not None:  # a wrong answer, caught: say why, not three stderr dumps
            print(f"demo stopped, every role exited: {cause}", file=sys.stderr)
            if mode in ("secformer", "mpcformer") and model_mode(model) != mode:
                print(
                    f"{mode} mode changes the model; distil it first: secformer distill --mode {mode}", file=sys.stderr
                )
            return None
        print(f"demo failed: {exc}", file=sys.stderr)
        for name, text in exc.stderr.items():
            if text.strip():
                print(f"--- {name} ---\n{text.strip()[-3000:]}", file=sys.stderr)
        return None


def demo(args: argparse.Namespace) -> int:
    from secformer.models.forward import run_plain
    from secformer.models.hf import default_model_dir, load_weights, model_mode
    from secformer.models.program import tokenize

    if args.model is not None and (problem := _check_model_dir(args.model)):
        return _fail(problem)
    model = str(args.model or default_model_dir())
    distilled = model_mode(model)
    modes = [args.mode] if args.mode else ([distilled] if distilled else ["puma", "secformer"])
    texts = args.text or DEFAULT_TEXTS
    if any(not t.strip() for t in texts):
        return _fail("--text must not be empty")
    name = Path(model).parent.name if args.model is None else model
    print(f"secformer demo: private sentence embeddings with {name}")
    print("P0 (model owner) secret-shares its weights; P1 (client) secret-shares the tokens of:")
    for t in texts:
        print(f"    {t!r}")
    spec, w = load_weights(model)
    ids, masks = tokenize(model, texts)
    # a distilled model is compared with its teacher, the model it stands in for
    ref_dir, ref_name = model, "the original model"
    teacher = _teacher_of(model)
    if teacher is not None:
        ref_dir, ref_name = teacher, "its teacher"
    ref_spec, ref_w = (spec, w) if ref_dir == model else load_weights(ref_dir)
    exact = [run_plain(ref_spec, ref_w, i, m, "exact")["embedding"][0] for i, m in zip(ids, masks, strict=True)]
    rows = []
    for n, mode in enumerate(modes, 1):
        print(f"\n[{n}/{len(modes)}] mode {mode}: {MODE_NOTES[mode]}")
        print("    dealer, P1 and P0 start as three processes on loopback; P0 loads and masks the model once ...")
        t0 = time.perf_counter()
        run = _run_mode(model, mode, texts, args)
        if run is None:
            return 1
        out = run.outputs[1]
        p0 = run.outputs[0]["results"][0]["outputs"]
        assert all(v is None for v in p0.values()), "P0 must learn nothing"
        for q, res in enumerate(out["results"]):
            e = res["outputs"]["embedding"][0]
            plain = run_plain(spec, w, ids[q], masks[q], mode)["embedding"][0]
            st = res["stats"]
            rows.append(
                {
                    "mode": mode,
                    "q": q,
                    "tokens": len(ids[q]),
                    "cos": _cos(e, exact[q]),
                    "cos_plain": _cos(plain, exact[q]),
                    "mpc": float(np.abs(e - plain).max()),
                    "time": st["time"],
                    "online": st["online_bytes_sent"] / 1e6,
                    "dealer": st["dealer_bytes_recv"] / 1e6,
                    "rounds": st["rounds"],
                    "wait": st["dealer_wait_time"],
                }
            )
        load = out["load"]
        print(
            f"    done in {time.perf_counter() - t0:.0f} s, of which the one-off model load took {load['time']:.1f} s "
            f"({load['online_bytes_sent'] / 1e6:.0f} MB per party to open the masked weights)"
        )
    print(f"\nP1 learned one {spec.hidden}-number embedding per sentence; P0 learned nothing.\n")
    print(
        f"| mode | sentence | tokens | cosine to {ref_name} | MPC error | time (s) | online MB | dealer MB | rounds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['q']} | {r['tokens']} | {r['cos']:.4f} | {r['mpc']:.1e} | {r['time']:.2f} | "
            f"{r['online']:.1f} | {r['dealer']:.1f} | {r['rounds']} |"
        )
    print(
        "\n- cosine: the private embedding against the plaintext model; 1.0 is exact.\n"
        "- MPC error: max |private - plaintext with the same approximations|: what MPC itself adds.\n"
        "- time per query, after the model load; online MB: sent by one party to the other; dealer MB: "
        "correlated randomness sent to P1; rounds: sequential message exchanges.\n"
        "- A query of a length this client has never run asks the dealer for its material step by step "
        "(on demand); once its plan is known (kept in ~/.cache/secformer/plans), queries of that length "
        f"stream their material ahead and are faster. Here P1 waited {rows[0]['wait']:.1f} s for the dealer "
        "in the first query (the dealer shares these 2 cores with both parties)."
    )
    if "secformer" in modes and distilled is None:
        sec = [r["cos"] for r in rows if r["mode"] == "secformer"]
        print(
            f"- SecFormer's trade-off: its 2Quad softmax costs fewer rounds and bytes, but changes the model "
            f"(cosine {min(sec):.2f}-{max(sec):.2f} here, undistilled). `secformer distill` trains the model "
            "for it and brings the cosine back to 0.99 (docs/ACCURACY.md)."
        )
    return 0


def keygen(args: argparse.Namespace) -> int:
    import os

    from secformer.tls import keygen as make

    out = Path(args.dir)
    if args.client:
        from secformer.errors import ConfigError
        from secformer.tls import issue_client

        try:
            paths = issue_client(out, args.client, days=args.days)
        except ConfigError as exc:
            return _fail(str(exc))
        cert = paths[f"client-{args.client}"]
        print(
            f"wrote {cert} and its key for client {args.client!r} (role party1), signed by {out}/ca.key.\n"
            f"give the client ca.pem, {cert.name} and {cert.name[:-4]}.key; its cluster.toml's [tls] section:\n"
            f'[tls]\nca = "ca.pem"\ncert = "{cert.name}"\nkey = "{cert.name[:-4]}.key"'
        )
        return 0
    if (out / "ca.key").exists() and not args.force:
        print(f"{out} already holds a CA (ca.key); pass --force to replace it", file=sys.stderr)
        return 2
    make(out, days=args.days)
    print(f"wrote a cluster CA and keys/certificates for party0, party1, dealer into {out}/")
    base = Path(args.config).resolve().parent if args.config else Path.cwd()
    rel = os.path.relpath(out.resolve(), base)
    snippet = f'[tls]\nca = "{rel}/ca.pem"\ncert = "{rel}/{{role}}.pem"\nkey = "{rel}/{{role}}.key"\n'
    if args.config:
        cfg = Path(args.config)
        text = cfg.read_text() if cfg.exists() else ""
        if "[tls]" in text:
            print(f"{cfg} already has a [tls] section; it should read:\n{snippet}")
        else:
            cfg.write_text(text + ("\n" if text and not text.endswith("\n") else "") + snippet)
            print(f"added the [tls] section to {cfg}")
    else:
        print(f"add to cluster.toml:\n{snippet}")
    print(
        "copy ca.pem and <role>.pem/<role>.key to each role's host; keep ca.key offline "
        f"(key files are mode 0600). Valid {args.days} days."
    )
    return 0


def _teacher_of(model: str) -> str | None:
    """The teacher directory recorded by `secformer distill`, if it is on this machine."""
    import json

    meta = Path(model) / "secformer.json"
    if meta.is_file():
        t = json.loads(meta.read_text()).get("teacher")
        if t and (Path(t) / "config.json").is_file():
            return str(t)
    return None


def _fail(msg: str) -> int:
    print(f"secformer: error: {msg}", file=sys.stderr)
    return 2


def _check_model_dir(model: str) -> str | None:
    """A problem with ``--model`` (checked before any heavy import), or None."""
    p = Path(model)
    if not p.is_dir():
        return f"--model {model}: no such directory"
    if not (p / "config.json").is_file():
        return f"--model {model}: no config.json (not a HuggingFace model directory)"
    return None


def infer(args: argparse.Namespace) -> int:
    from secformer import results

    # everything a user can get wrong is checked before connecting or importing anything heavy
    problem = _check_model_dir(args.model)
    if problem:
        return _fail(problem)
    if args.max_len < 2:
        return _fail(f"--max-len must be at least 2 (the special tokens), got {args.max_len}")
    if args.output and args.output != "-" and not args.output.endswith(results.FORMATS):
        return _fail(f"--output {args.output}: use a .jsonl, .npy or .npz file, or - for JSON lines on stdout")
    texts: list[str] = []
    if args.party == 1:
        got = _client_texts(args)
        if isinstance(got, str):
            return _fail(got)
        texts = got
    elif args.text or args.texts_file or args.output or args.offline:
        return _fail("--text, --texts-file, --output and --offline are the client's (P1); P0 learns no result")

    from parties.common import load_config, run_main, setup_role_logging
    from secformer.models.hf import load_spec, load_tokenizer, model_mode
    from secformer.models.program import infer as program
    from secformer.node import run_party

    spec = load_spec(args.model)
    if args.max_len > spec.max_pos:
        return _fail(f"--max-len {args.max_len} exceeds the model's {spec.max_pos} positions")
    args.mode = args.mode or model_mode(args.model) or "secformer"
    inputs = {"model": args.model, "mode": args.mode, "max_len": args.max_len, "progress": args.party == 1}
    inputs["offline"], inputs["offline_memory"] = args.offline, args.offline_memory * 1e9
    tokens: list[int] = []
    if args.party == 1:
        inputs["texts"] = texts
        if args.reveal:
            inputs["reveal"] = args.reveal
        tok = load_tokenizer(args.model)
        tokens = [len(tok(t)["input_ids"]) for t in texts]
        for i, n in enumerate(tokens):
            if n > args.max_len:
                print(
                    f"note: text {i} has {n} tokens; only the first {args.max_len} are used (--max-len)",
                    file=sys.stderr,
                )
    else:
        inputs["max_queries"] = args.max_queries
        if args.unsafe_reveal:
            inputs["unsafe_reveal"] = args.unsafe_reveal

    setup_role_logging(args, f"P{args.party}")

    async def go():  # type: ignore[no-untyped-def]
        return await run_party(args.party, load_config(args), program, inputs, args.netsim)

    res = run_main(f"secformer infer P{args.party}", go())
    if args.party == 1:
        _print_results(res.output["results"], texts, tokens, args)
    return 0


def _print_results(out: list[dict[str, Any]], texts: list[str], tokens: list[int], args: argparse.Namespace) -> None:
    """One line per query (stderr when the results go to stdout), then --output if given."""
    from secformer import results

    human = sys.stderr if args.output == "-" else sys.stdout
    for q, r in enumerate(out):
        shown = "; ".join(
            f"{k}{list(np.shape(v))}[:8] = {np.round(np.ravel(v)[:8], 4)}" for k, v in r["outputs"].items()
        )
        st = r["stats"]
        off = f" online, offline {st['offline_time']:.2f} s" if args.offline else ""
        print(
            f"query {q}: {shown} ({st['time']:.2f} s{off}, {st['online_bytes_sent'] / 1e6:.1f} MB, "
            f"{st['rounds']} rounds, P1 waited {st['dealer_wait_time']:.2f} s for the dealer)",
            file=human,
        )
    if args.output:
        results.write(args.output, texts, tokens, args.max_len, out)
        if args.output != "-":
            print(f"wrote {len(out)} results to {args.output}", file=human)


def _client_texts(args: argparse.Namespace) -> list[str] | str:
    """The texts of --text and --texts-file, or an error message."""
    from secformer import results

    texts = list(args.text or [])
    if args.texts_file:
        try:
            texts += results.read_texts(args.texts_file)
        except (OSError, ValueError) as exc:
            return str(exc)
    if not texts:
        return "P1 (client) needs --text or --texts-file"
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        return f"text {empty[0]} is empty: a query needs at least one word"
    return texts


def serve_cmd(args: argparse.Namespace) -> int:
    import asyncio
    import json
    import signal

    from secformer.models.hf import default_model_dir

    model = args.model or str(default_model_dir())
    problem = _check_model_dir(model)
    if problem:
        return _fail(problem)
    from parties.common import load_config, run_main, setup_role_logging
    from secformer.server import ModelServer, run_server

    setup_role_logging(args, "server")

    async def go():  # type: ignore[no-untyped-def]
        cfg = load_config(args)
        server = ModelServer(
            cfg,
            model,
            args.mode,
            args.netsim,
            max_sessions=args.max_sessions,
            session_memory=args.session_memory * 1e9,
            max_queries=args.max_queries,
            max_batch=args.max_batch,
            max_len=args.max_len,
            idle_timeout=args.idle_timeout,
            unsafe_reveal=tuple(n.strip() for n in (args.unsafe_reveal or "").split(",") if n.strip()),
            client_quota=args.client_quota,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_server(server, stop, args.drain_timeout)

    st = run_main("secformer serve", go())
    print(f"server stopped: {json.dumps(st['totals'])}", file=sys.stderr)
    return 0


def query_cmd(args: argparse.Namespace) -> int:
    from secformer import results

    texts = _client_texts(args)
    if isinstance(texts, str):
        return _fail(texts)
    if args.output and args.output != "-" and not args.output.endswith(results.FORMATS):
        return _fail(f"--output {args.output}: use a .jsonl, .npy or .npz file, or - for JSON lines on stdout")
    if args.max_len < 2:
        return _fail(f"--max-len must be at least 2 (the special tokens), got {args.max_len}")
    from parties.common import load_config, run_main, setup_role_logging
    from secformer.client import AsyncClient

    setup_role_logging(args, "client")

    async def go():  # type: ignore[no-untyped-def]
        cfg = load_config(args)
        async with AsyncClient(
            cfg,
            args.server,
            args.dealer,
            mode=args.mode,
            netsim=args.netsim,
            offline=args.offline,
            offline_memory=args.offline_memory * 1e9,
            max_len=args.max_len,
        ) as c:
            print(
                f"session open: model {c.info.get('model')} ({c.spec.arch}, {c.spec.layers} layers), mode "
                f"{c.info.get('mode')}, set up (public files, weights masked) in {c.load_time:.2f} s",
                file=sys.stderr,
            )
            return await c.query(texts, args.reveal), min(args.max_len, int(c.info.get("max_len", args.max_len)))

    out, args.max_len = run_main("secformer query", go())
    for i, r in enumerate(out):
        if r["tokens"] > args.max_len:
            print(f"note: text {i} has {r['tokens']} tokens; only the first {args.max_len} were used", file=sys.stderr)
    _print_results(out, texts, [r["tokens"] for r in out], args)
    return 0


def status_cmd(args: argparse.Namespace) -> int:
    import json

    from parties.common import load_config, run_main
    from secformer.client import parse_endpoint
    from secformer.link import party_name
    from secformer.mesh import open_link
    from secformer.node import tls_contexts
    from secformer.tls import ROLE_NAMES

    peer = 2 if args.dealer else 0
    me = {v: k for k, v in ROLE_NAMES.items()}[args.role]

    async def go():  # type: ignore[no-untyped-def]
        cfg = load_config(args)
        where = parse_endpoint(args.at, "--at") if args.at else cfg.endpoints[peer]
        _, cctx = tls_contexts(cfg, me)
        link, info = await open_link(
            me, peer, where, "status", {"request": "status"}, cfg.connect_timeout, None, cfg.max_frame, cctx
        )
        link.writer.close()
        if "status" not in info:
            raise SecformerError(f"{party_name(peer)} at {where.host}:{where.port} sent no status")
        return info["status"]

    from secformer.errors import SecformerError

    st = run_main("secformer status", go())
    print(json.dumps(st, indent=2))
    return 0


_PROSE = ("mix", "mix-long", "docstrings", "debian", "licences", "python-reference", "passages")
MIX_PER_SOURCE = 30000


def _mix(per_source: int = MIX_PER_SOURCE, name: str = "mix") -> list[str]:
    """ "mix": WordNet, docstrings and Debian's descriptions; "mix-long": with passages as well."""
    from secformer.distill import prose

    sources = prose.MIX_LONG if name == "mix-long" else prose.MIX
    return prose.mix({s: prose.source_texts(s) for s in sources}, per_source)


def _texts(data: str | None, heldout: float) -> tuple[list[str], list[str], str]:
    """(train, held-out, source) from --data: a file, "wordnet", "sample" (the shipped one), a
    source of :mod:`secformer.distill.prose` or "mix" (WordNet, docstrings and Debian's
    package descriptions, at most 30,000 texts of each)."""
    from secformer.distill.data import SAMPLE, read_texts, split_heldout, wordnet_texts

    if data in (None, "wordnet"):
        try:
            texts, source = wordnet_texts(), "WordNet 3.0 (Debian wordnet-base), glosses and examples"
        except Exception as exc:
            if data == "wordnet":
                raise
            print(f"note: {exc}; using the 2,000-sentence sample shipped with secformer", file=sys.stderr)
            texts, source = read_texts(SAMPLE).texts, f"{SAMPLE.name} (WordNet 3.0 sample)"
    elif data == "sample":
        texts, source = read_texts(SAMPLE).texts, f"{SAMPLE.name} (WordNet 3.0 sample)"
    elif data in _PROSE:
        from secformer.distill import prose

        if data in ("mix", "mix-long"):
            texts = _mix(name=data)
            source = "the mix " + " + ".join(prose.MIX_LONG if data == "mix-long" else prose.MIX)
        else:
            texts, source = prose.source_texts(data), prose.SOURCES[data]
    else:
        texts, source = read_texts(data).texts, data
    train, held = split_heldout(texts, heldout)
    return train, held, source


def distill_cmd(args: argparse.Namespace) -> int:
    from secformer.distill import DistillConfig, distill
    from secformer.models.hf import default_model_dir

    teacher = str(args.teacher or default_model_dir())
    train, held, source = _texts(args.data, args.heldout)
    cfg = DistillConfig(
        teacher=teacher,
        out=args.out,
        mode=args.mode,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_len=args.max_len,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
    )
    print(f"distilling {teacher} into its {args.mode} student on {len(train)} texts from {source}")
    print(f"({len(held)} held-out texts are never trained on; `secformer evaluate` uses them)")
    r = distill(cfg, train, resume=not args.no_resume, data_source=source)
    first, last = r.losses[0][2], r.losses[-1][2]
    print(f"done in {r.seconds:.0f} s, {r.steps} steps; loss {first:.4f} -> {last:.4f}; model written to {r.out}")
    print(f"run it privately: secformer demo --model {r.out}")
    return 0


def finetune_cmd(args: argparse.Namespace) -> int:
    import json

    from secformer.distill.finetune import FinetuneConfig, finetune
    from secformer.distill.tasks import load_task
    from secformer.models.hf import default_model_dir

    model = str(args.model or default_model_dir())
    task = load_task(args.data)
    sizes = ", ".join(f"{s} {len(v[0])}" for s, v in task.splits.items())
    print(f"fine-tuning {model} on {task.name} ({len(task.labels)} labels; {sizes}) from {task.source}")
    cfg = FinetuneConfig(
        model=model,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_len=args.max_len,
        seed=args.seed,
        threads=args.threads,
    )
    r = finetune(cfg, task)
    for split in ("train", "dev", "test"):  # distil on train.jsonl; evaluate on test.jsonl
        texts, labels = task.splits[split]
        rows = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True))
        (r.out / f"{split}.jsonl").write_text(rows, encoding="utf-8")
    first = float(np.mean([v for _, v in r.losses[:20]]))
    last = float(np.mean([v for _, v in r.losses[-20:]]))
    print(f"done in {r.seconds:.0f} s, {cfg.steps} steps; loss {first:.3f} -> {last:.3f}")
    for split, m in r.metrics.items():
        print(f"{split}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro F1']:.4f}")
    print(f"classifier written to {r.out} (with the task's splits: train.jsonl, dev.jsonl, test.jsonl)")
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    import json

    from secformer.distill import model_mode
    from secformer.distill.evaluate import evaluate_classifier, evaluate_embeddings
    from secformer.models.hf import default_model_dir, load_spec

    teacher = str(args.teacher or default_model_dir())
    students = {f"student {i}" if len(args.student) > 1 else "student": s for i, s in enumerate(args.student)}
    mode = args.mode or model_mode(args.student[0]) or "secformer"
    spec = load_spec(teacher)
    results: dict[str, dict[str, float]] = {}
    if spec.head == "classifier":
        from secformer.distill.data import read_texts

        ts = read_texts(args.data)
        if ts.labels is None:
            print(f"{args.data} has no label column", file=sys.stderr)
            return 2
        n = min(args.n, len(ts.texts))
        for name, rep in evaluate_classifier(teacher, args.student[0], ts.texts[:n], ts.labels[:n], mode).items():
            results[name] = rep.metrics
    else:
        _, held, source = _texts(args.data, args.heldout)
        held = held[: args.n]
        print(f"{len(held)} held-out texts from {source}; student mode {mode}")
        reps = evaluate_embeddings(teacher, {"teacher under the mode (before)": teacher, **students}, held, mode)
        results = {k: v.metrics for k, v in reps.items()}
        if args.private:
            results["private"] = _private_check(args.student[0], held[: args.private], mode, teacher)
    for name, metrics in results.items():
        print(f"\n{name}:")
        for k, v in metrics.items():
            print(f"  {k:<44} {v:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": mode, "teacher": teacher, "results": results}, indent=2))
    return 0


def _private_check(student: str, texts: list[str], mode: str, teacher: str) -> dict[str, float]:
    """Run ``texts`` privately (three roles, TLS, loopback) through the student."""
    from secformer.distill.evaluate import cosines, plain_outputs, retrieval_agreement
    from secformer.launch import run_local
    from secformer.models.program import infer as program

    inputs = {"model": student, "mode": mode}
    run = run_local(program, inputs, {**inputs, "texts": texts})
    priv = np.stack([r["outputs"]["embedding"][0] for r in run.outputs[1]["results"]])
    plain = np.stack([o["embedding"][0] for o in plain_outputs(student, texts, mode)])
    ref = np.stack([o["embedding"][0] for o in plain_outputs(teacher, texts, "exact")])
    agree = retrieval_agreement(ref, priv, ks=(1,))[1] if len(texts) > 2 else float("nan")
    return {
        "texts run privately": float(len(texts)),
        "retrieval agreement top-1 among them (private)": agree,
        "max |private - plaintext student|": float(np.abs(priv - plain).max()),
        "cosine(private student, teacher), mean": float(cosines(priv, ref).mean()),
        "cosine(private student, teacher), min": float(cosines(priv, ref).min()),
        "seconds per private query": float(np.mean([r["stats"]["time"] for r in run.outputs[1]["results"]])),
    }


def corpus_cmd(args: argparse.Namespace) -> int:
    from secformer.distill import prose
    from secformer.distill.data import wordnet_texts

    if args.source == "wordnet":
        texts = wordnet_texts(args.wordnet_dir)
    elif args.source in ("mix", "mix-long"):
        texts = _mix(args.per_source, args.source)
    else:
        texts = prose.source_texts(args.source)
    Path(args.out).write_text("\n".join(texts) + "\n", encoding="utf-8")
    sources = prose.MIX_LONG if args.source == "mix-long" else prose.MIX
    what = f"the mix of {', '.join(sources)}" if args.source.startswith("mix") else prose.SOURCES[args.source]
    print(f"wrote {len(texts)} texts ({what}) to {args.out}")
    return 0


def mlp_demo(args: argparse.Namespace) -> int:
    from secformer.demo import mlp_inputs, mlp_plain
    from secformer.launch import ProcessFailedError, run_processes

    in0, in1 = mlp_inputs(args.seed)
    print("P0 (model owner) holds a 2-layer MLP, P1 (client) holds 4 input rows; three processes ...")
    try:
        run = run_processes("secformer.demo:mlp", in0, in1, netsim=args.netsim, timeout=args.timeout)
    except ProcessFailedError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    y = run.outputs[1]
    np.set_printoptions(precision=4, suppress=True)
    print(f"P1 learns relu(x @ W1) @ W2 =\n{y}\nP0 learns: {run.outputs[0]}")
    print(f"max |private - plaintext| = {np.max(np.abs(y - mlp_plain(in0['w1'], in0['w2'], in1['x']))):.2e}")
    print(run.report())
    return 0


def _parser(name: str, sub: argparse._SubParsersAction, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from secformer import __version__

    p = argparse.ArgumentParser(
        prog="secformer",
        description="Private Transformer inference over two-party MPC with a dealer (SecFormer).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"secformer {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="command")
    d = _parser("demo", sub, "private sentence embeddings on three local processes: accurate mode, then SecFormer's")
    d.add_argument("--mode", default=None, choices=MODES, help="run only this mode (default: puma, then secformer)")
    d.add_argument("--model", default=None, help="HF model directory (default: all-MiniLM-L6-v2 from PyPI)")
    d.add_argument("--text", action="append", help="a sentence (repeatable; default: two built-in sentences)")
    d.add_argument("--netsim", default=None, help="network profile: none, lan, wan or a .toml path")
    d.add_argument("--timeout", type=float, default=1800.0, help="seconds before the demo gives up on a private run")
    d.set_defaults(fn=demo)
    i = _parser("infer", sub, "run one party of a private inference (real hosts, cluster.toml)")
    from parties.common import common_args

    common_args(i)
    i.add_argument("--party", type=int, required=True, choices=(0, 1), help="0: model owner, 1: client")
    i.add_argument("--model", required=True, help="HF model directory (P1 needs config.json + tokenizer)")
    i.add_argument("--mode", default=None, choices=MODES, help="default: the model's distilled mode, else secformer")
    i.add_argument("--text", action="append", help="P1: a text to query (repeatable)")
    i.add_argument(
        "--texts-file", default=None, help='P1: texts to query, one per line (.txt) or JSON lines with a "text" field'
    )
    i.add_argument("--max-len", type=int, default=128, help="tokens per text; longer texts are cut (with a note)")
    i.add_argument(
        "--reveal",
        default=None,
        help="P1: what to learn, comma-separated: the task's one result (embedding | logits | label | "
        "next_logits | token; default: embedding, logits or next_logits by the model's head), plus "
        "intermediates only if P0 enables them",
    )
    i.add_argument(
        "--max-queries",
        type=int,
        default=1000,
        help="P0: most queries answered in this session; any service's answers allow black-box model "
        "extraction over many queries",
    )
    i.add_argument(
        "--unsafe-reveal",
        default=None,
        help="P0: intermediate outputs the client may learn (hidden, pooled, embedding, logits). UNSAFE: "
        "with them a client recovers the head's weights by least squares over many queries",
    )
    i.add_argument(
        "--offline",
        action="store_true",
        help="P1: offline phase: fetch each query's dealer material before the query (the first one while P0 "
        "loads the model), so a query's time is its online time; reported apart. Needs a plan: an earlier query "
        "of the same length, or one cached from an earlier session",
    )
    i.add_argument(
        "--offline-memory",
        type=float,
        default=6.0,
        help="GB of one query's material a party holds ahead; the rest streams during the query",
    )
    i.add_argument(
        "--output",
        default=None,
        help="P1: write every result to .jsonl (text, result, time, bytes, rounds), .npy or .npz; - for JSON "
        "lines on stdout (format: secformer/results.py)",
    )
    i.set_defaults(fn=infer)
    sv = _parser("serve", sub, "run the model owner (P0) as a server that answers many clients' sessions")
    common_args(sv)
    sv.add_argument("--model", default=None, help="HF model directory (default: all-MiniLM-L6-v2 from PyPI)")
    sv.add_argument("--mode", default=None, choices=MODES, help="default: the model's distilled mode, else secformer")
    sv.add_argument("--max-sessions", type=int, default=4, help="sessions open at once; more are refused")
    sv.add_argument(
        "--session-memory", type=float, default=2.0, help="GB of dealer material one session may hold ahead"
    )
    sv.add_argument("--max-queries", type=int, default=1000, help="queries answered per session (model extraction)")
    sv.add_argument(
        "--client-quota",
        type=int,
        default=0,
        help="queries per client certificate over the server's life, across sessions (0: no bound)",
    )
    sv.add_argument("--max-batch", type=int, default=64, help="texts per batch")
    sv.add_argument("--max-len", type=int, default=None, help="tokens per text (default: the model's positions)")
    sv.add_argument("--idle-timeout", type=float, default=600.0, help="seconds a session may wait between batches")
    sv.add_argument("--drain-timeout", type=float, default=600.0, help="seconds SIGTERM waits for running batches")
    sv.add_argument("--unsafe-reveal", default=None, help="intermediate outputs clients may learn (as for infer)")
    sv.set_defaults(fn=serve_cmd)
    qy = _parser("query", sub, "a client: open a session with a model server and query it privately")
    common_args(qy)
    qy.add_argument("--server", default=None, help="HOST:PORT of the model server (default: [party0] of --config)")
    qy.add_argument("--dealer", default=None, help="HOST:PORT of the dealer (default: [dealer] of --config)")
    qy.add_argument("--mode", default=None, choices=MODES, help="refuse a server that runs another mode")
    qy.add_argument("--text", action="append", help="a text to query (repeatable)")
    qy.add_argument("--texts-file", default=None, help='texts, one per line (.txt) or JSON lines with a "text" field')
    qy.add_argument("--reveal", default=None, help="what to learn (as for infer; default: the task's result)")
    qy.add_argument("--max-len", type=int, default=128, help="tokens per text; longer texts are cut (with a note)")
    qy.add_argument("--offline", action="store_true", help="fetch each query's dealer material before it")
    qy.add_argument("--offline-memory", type=float, default=2.0, help="GB of material held ahead (server may cap)")
    qy.add_argument("--output", default=None, help="write the results to .jsonl, .npy or .npz (as infer); - stdout")
    qy.set_defaults(fn=query_cmd)
    st = _parser("status", sub, "ask a running model server (or dealer service) for its sessions and counts")
    common_args(st)
    st.add_argument("--dealer", action="store_true", help="ask the dealer service instead of the model server")
    st.add_argument("--at", default=None, help="HOST:PORT to ask (default: from --config)")
    st.add_argument(
        "--role", default="party0", choices=("party0", "dealer"), help="whose certificate of --config to present"
    )
    st.set_defaults(fn=status_cmd)
    k = _parser("keygen", sub, "write a cluster CA and a TLS key/certificate per role")
    k.add_argument("dir", help="output directory (e.g. certs)")
    k.add_argument("--config", default=None, help="add the [tls] section to this cluster.toml")
    k.add_argument("--days", type=int, default=365, help="validity of the CA and the certificates")
    k.add_argument("--force", action="store_true", help="replace an existing CA")
    k.add_argument(
        "--client",
        default=None,
        help="instead: issue one more client certificate (role party1, named NAME) from the CA already in DIR",
    )
    k.set_defaults(fn=keygen)
    ds = _parser("distill", sub, "distil a HF model into its 2Quad student")
    ds.add_argument("--teacher", default=None, help="HF model directory (default: all-MiniLM-L6-v2)")
    ds.add_argument(
        "--data",
        default=None,
        help="text file (.txt/.csv/.jsonl), 'wordnet', 'sample', 'mix' or a source of `secformer corpus`",
    )
    ds.add_argument("--out", required=True, help="directory of the student (also its checkpoints)")
    ds.add_argument("--mode", default="secformer", choices=("secformer", "mpcformer"), help="the student's mode")
    ds.add_argument("--stage1-steps", type=int, default=1000, help="layer-wise steps (attention + hidden states)")
    ds.add_argument("--stage2-steps", type=int, default=500, help="output steps (embedding / logits)")
    ds.add_argument("--batch-size", type=int, default=32, help="texts per training step")
    ds.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    ds.add_argument("--max-len", type=int, default=64, help="tokens per training text")
    ds.add_argument("--seed", type=int, default=0, help="fixes data order and initialisation (the result)")
    ds.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    ds.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out")
    ds.add_argument("--heldout", type=float, default=0.05, help="fraction of texts kept out of training")
    ds.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ds.set_defaults(fn=distill_cmd)
    ft = _parser("finetune", sub, "fine-tune a HF encoder into a classifier on a labelled task (the teacher)")
    ft.add_argument("--model", default=None, help="HF encoder directory (default: all-MiniLM-L6-v2)")
    ft.add_argument(
        "--data",
        default=None,
        help="'wordnet' (WordNet supersenses, 45 labels), 'sample' (the shipped sample of it), or a .jsonl/.csv "
        "with text and label (default: wordnet if installed, else sample)",
    )
    ft.add_argument("--out", required=True, help="directory of the classifier")
    ft.add_argument("--steps", type=int, default=1500, help="training steps")
    ft.add_argument("--batch-size", type=int, default=32, help="texts per step")
    ft.add_argument("--lr", type=float, default=1e-4, help="AdamW peak learning rate")
    ft.add_argument("--max-len", type=int, default=64, help="tokens per text")
    ft.add_argument("--seed", type=int, default=0, help="fixes the head's initialisation and the data order")
    ft.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ft.set_defaults(fn=finetune_cmd)
    ev = _parser("evaluate", sub, "teacher vs student on held-out texts, plaintext and private")
    ev.add_argument("--teacher", default=None, help="HF model directory (default: all-MiniLM-L6-v2)")
    ev.add_argument("--student", action="append", required=True, help="student directory (repeatable)")
    ev.add_argument("--data", default=None, help="as for distill; classifiers: a labelled .csv/.jsonl")
    ev.add_argument("--mode", default=None, help="default: the mode the student was distilled for")
    ev.add_argument("--n", type=int, default=500, help="held-out texts to evaluate")
    ev.add_argument(
        "--heldout",
        type=float,
        default=0.05,
        help="fraction held out (as given to distill); 1.0: all of --data (text never trained on)",
    )
    ev.add_argument("--private", type=int, default=0, help="also run this many texts privately")
    ev.add_argument("--json", default=None, help="write the numbers here")
    ev.set_defaults(fn=evaluate_cmd)
    co = _parser("corpus", sub, "write real English text from local files (WordNet, docstrings, Debian) to a file")
    co.add_argument("--out", required=True, help="text file to write, one sentence per line")
    co.add_argument(
        "--source",
        default="wordnet",
        choices=["wordnet", *_PROSE],
        help="wordnet (apt-get install wordnet-base), docstrings, debian, licences, python-reference, passages "
        "(2-3 consecutive sentences), mix (wordnet, docstrings, debian: --per-source texts of each) or mix-long "
        "(the mix and passages)",
    )
    co.add_argument("--per-source", type=int, default=MIX_PER_SOURCE, help="mix: texts taken from each source")
    co.add_argument("--wordnet-dir", default="/usr/share/wordnet", help="WordNet 3.0's database directory")
    co.set_defaults(fn=corpus_cmd)
    m = _parser("mlp-demo", sub, "the runtime demo: a private 2-layer MLP")
    m.add_argument("--netsim", default=None, help="network profile: none, lan, wan or a .toml path")
    m.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    m.add_argument("--timeout", type=float, default=600.0, help="seconds before the demo gives up")
    m.set_defaults(fn=mlp_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if getattr(args, "fn", None) is None:
        p.print_help()
        sys.exit(0)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
