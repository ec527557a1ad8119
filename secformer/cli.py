"""``secformer`` command.

secformer demo      private sentence embedding with all-MiniLM-L6-v2, three local processes
secformer infer     one party of a private inference on real hosts (cluster.toml)
secformer keygen    a cluster CA and one TLS key/certificate per role
secformer distill   distil a HF model into its 2Quad (SecFormer) student
secformer evaluate  teacher vs student: embeddings/retrieval or accuracy, plaintext and private
secformer corpus    write WordNet's sentences (Debian wordnet-base) to a text file
secformer mlp-demo  the runtime demo: a private 2-layer MLP
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from secformer.models import MODES

DEFAULT_TEXTS = ["A man is playing a guitar on the street.", "Privacy-preserving inference keeps the text secret."]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def demo(args: argparse.Namespace) -> int:
    from secformer.launch import ProcessFailedError, run_processes
    from secformer.models.forward import run_plain
    from secformer.models.hf import default_model_dir, load_weights, model_mode
    from secformer.models.program import tokenize

    model = str(args.model or default_model_dir())
    args.mode = args.mode or model_mode(model) or "secformer"
    texts = args.text or DEFAULT_TEXTS
    print(f"secformer demo: model {Path(model).parent.name if args.model is None else model}, mode {args.mode}")
    print("P0 (model owner) secret-shares the weights; P1 (client) secret-shares the tokens of:")
    for t in texts:
        print(f"    {t!r}")
    print("Starting dealer, P1 and P0 as three processes on loopback ...", flush=True)
    t0 = time.perf_counter()
    common = {"model": np.array(model), "mode": np.array(args.mode)}
    try:
        run = run_processes(
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
            if args.mode in ("secformer", "mpcformer") and model_mode(model) != args.mode:
                print(
                    f"{args.mode} mode changes the model; distil it first: secformer distill --mode {args.mode}",
                    file=sys.stderr,
                )
            return 1
        print(f"demo failed: {exc}", file=sys.stderr)
        for name, text in exc.stderr.items():
            if text.strip():
                print(f"--- {name} ---\n{text.strip()[-3000:]}", file=sys.stderr)
        return 1
    out = run.outputs[1]
    spec, w = load_weights(model)
    ids, masks = tokenize(model, texts)
    # a distilled model is compared with its teacher, the model it stands in for
    ref_dir, ref_name = model, "original HF model"
    teacher = _teacher_of(model)
    if teacher is not None:
        ref_dir, ref_name = teacher, "teacher HF model"
    ref_spec, ref_w = (spec, w) if ref_dir == model else load_weights(ref_dir)
    p0 = run.outputs[0]["results"][0]["outputs"]
    nothing = all(v is None for v in p0.values())
    print(f"\nP0 learned: {'nothing (every output is revealed to P1 only)' if nothing else p0}")
    print(
        f"one-off model load: {out['load']['time']:.2f} s, {out['load']['online_bytes_sent'] / 1e6:.1f} MB "
        f"sent per party to open the masked weights, {out['load']['rounds']} rounds"
    )
    for q, res in enumerate(out["results"]):
        e = res["outputs"]["embedding"][0]
        plain = run_plain(spec, w, ids[q], masks[q], args.mode)
        exact = run_plain(ref_spec, ref_w, ids[q], masks[q], "exact")
        st = res["stats"]
        print(f"\nquery {q}: {len(ids[q])} tokens -> sentence embedding (384 numbers, revealed to P1 only)")
        print(f"  cosine(private, {ref_name})          = {_cos(e, exact['embedding'][0]):.4f}")
        c_plain = _cos(plain["embedding"][0], exact["embedding"][0])
        print(f"  cosine(plaintext {args.mode} approx, {ref_name.split()[0]}) = {c_plain:.4f}   (approximation error)")
        print(
            f"  max |private - plaintext same approx|       = {np.abs(e - plain['embedding'][0]).max():.2e}"
            "   (MPC error)"
        )
        print(
            f"  time {st['time']:.2f} s, online {st['online_bytes_sent'] / 1e6:.2f} MB sent per party, "
            f"dealer {st['dealer_bytes_recv'] / 1e6:.2f} MB (waited {st['dealer_wait_time']:.2f} s), "
            f"{st['rounds']} rounds"
        )
        print(
            "  per op type:  "
            + ", ".join(
                f"{k} {v['time']:.2f} s / {v['bytes'] / 1e6:.1f} MB / {v['rounds']} r"
                for k, v in st["by_category"].items()
                if v["rounds"] or v["bytes"]
            )
        )
    if args.mode in ("secformer", "mpcformer") and model_mode(model) is None:
        print(
            f"\nNote: {args.mode} mode changes the model (2Quad softmax); without distillation the"
            " embedding drifts from the original. `secformer distill` gives it back"
            " (docs/ACCURACY.md: mean cosine 0.76 -> 0.99)."
        )
    print(f"\n{run.report()}")
    print(f"(wall time including process start-up, model loading and JIT cache load: {time.perf_counter() - t0:.1f} s)")
    return 0


def keygen(args: argparse.Namespace) -> int:
    import os

    from secformer.tls import keygen as make

    out = Path(args.dir)
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


def infer(args: argparse.Namespace) -> int:
    import pickle

    from parties.common import load_config, run_main, setup_role_logging
    from secformer.models.hf import model_mode
    from secformer.models.program import infer as program
    from secformer.node import run_party

    args.mode = args.mode or model_mode(args.model) or "secformer"
    inputs = {"model": args.model, "mode": args.mode, "max_len": args.max_len, "progress": args.party == 1}
    if args.party == 1:
        if not args.text:
            print("P1 (client) needs --text", file=sys.stderr)
            return 2
        inputs["texts"] = args.text
        if args.reveal:
            inputs["reveal"] = args.reveal
    else:
        inputs["max_queries"] = args.max_queries
        if args.unsafe_reveal:
            inputs["unsafe_reveal"] = args.unsafe_reveal

    setup_role_logging(args, f"P{args.party}")

    async def go():  # type: ignore[no-untyped-def]
        return await run_party(args.party, load_config(args), program, inputs, args.netsim)

    res = run_main(f"secformer infer P{args.party}", go())
    if args.party == 1:
        for q, r in enumerate(res.output["results"]):
            shown = "; ".join(
                f"{k}{list(v.shape)}[:8] = {np.round(np.ravel(v)[:8], 4)}" for k, v in r["outputs"].items()
            )
            print(f"query {q}: {shown} ({r['stats']['time']:.2f} s, {r['stats']['rounds']} rounds)")
    if args.output:
        with open(args.output, "wb") as fh:
            pickle.dump({"output": res.output, "stats": res.stats}, fh)
    return 0


def _texts(data: str | None, heldout: float) -> tuple[list[str], list[str], str]:
    """(train, held-out, source) from --data: a file, "wordnet", or "sample" (the shipped one)."""
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
    from secformer.distill.evaluate import cosines, plain_outputs
    from secformer.launch import run_local
    from secformer.models.program import infer as program

    inputs = {"model": student, "mode": mode}
    run = run_local(program, inputs, {**inputs, "texts": texts})
    priv = np.stack([r["outputs"]["embedding"][0] for r in run.outputs[1]["results"]])
    plain = np.stack([o["embedding"][0] for o in plain_outputs(student, texts, mode)])
    ref = np.stack([o["embedding"][0] for o in plain_outputs(teacher, texts, "exact")])
    return {
        "texts run privately": float(len(texts)),
        "max |private - plaintext student|": float(np.abs(priv - plain).max()),
        "cosine(private student, teacher), mean": float(cosines(priv, ref).mean()),
        "cosine(private student, teacher), min": float(cosines(priv, ref).min()),
        "seconds per private query": float(np.mean([r["stats"]["time"] for r in run.outputs[1]["results"]])),
    }


def corpus_cmd(args: argparse.Namespace) -> int:
    from secformer.distill.data import wordnet_texts

    texts = wordnet_texts(args.wordnet_dir)
    Path(args.out).write_text("\n".join(texts) + "\n", encoding="utf-8")
    print(f"wrote {len(texts)} WordNet 3.0 glosses and usage examples to {args.out}")
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="secformer", description="Private Transformer inference over MPC")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="private sentence embedding on three local processes")
    d.add_argument("--mode", default=None, choices=MODES, help="default: the model's distilled mode, else secformer")
    d.add_argument("--model", default=None, help="HF model directory (default: all-MiniLM-L6-v2 from PyPI)")
    d.add_argument("--text", action="append", help="a sentence (repeatable)")
    d.add_argument("--netsim", default=None, help="none | lan | wan | path.toml")
    d.add_argument("--timeout", type=float, default=1800.0)
    d.set_defaults(fn=demo)
    i = sub.add_parser("infer", help="run one party of a private inference (real hosts)")
    from parties.common import common_args

    common_args(i)
    i.add_argument("--party", type=int, required=True, choices=(0, 1))
    i.add_argument("--model", required=True, help="HF model directory (P1 needs config.json + tokenizer)")
    i.add_argument("--mode", default=None, choices=MODES, help="default: the model's distilled mode, else secformer")
    i.add_argument("--text", action="append")
    i.add_argument("--max-len", type=int, default=128)
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
    i.add_argument("--output", default=None)
    i.set_defaults(fn=infer)
    k = sub.add_parser("keygen", help="write a cluster CA and a TLS key/certificate per role")
    k.add_argument("dir", help="output directory (e.g. certs)")
    k.add_argument("--config", default=None, help="add the [tls] section to this cluster.toml")
    k.add_argument("--days", type=int, default=365)
    k.add_argument("--force", action="store_true", help="replace an existing CA")
    k.set_defaults(fn=keygen)
    ds = sub.add_parser("distill", help="distil a HF model into its 2Quad student")
    ds.add_argument("--teacher", default=None, help="HF model directory (default: all-MiniLM-L6-v2)")
    ds.add_argument("--data", default=None, help="text file (.txt/.csv/.jsonl), 'wordnet' or 'sample'")
    ds.add_argument("--out", required=True, help="directory of the student (also its checkpoints)")
    ds.add_argument("--mode", default="secformer", choices=("secformer", "mpcformer"))
    ds.add_argument("--stage1-steps", type=int, default=1000, help="layer-wise steps (attention + hidden states)")
    ds.add_argument("--stage2-steps", type=int, default=500, help="output steps (embedding / logits)")
    ds.add_argument("--batch-size", type=int, default=32)
    ds.add_argument("--lr", type=float, default=1e-4)
    ds.add_argument("--max-len", type=int, default=64)
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--checkpoint-every", type=int, default=100)
    ds.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out")
    ds.add_argument("--heldout", type=float, default=0.05, help="fraction of texts kept out of training")
    ds.add_argument("--threads", type=int, default=0)
    ds.set_defaults(fn=distill_cmd)
    ev = sub.add_parser("evaluate", help="teacher vs student on held-out texts, plaintext and private")
    ev.add_argument("--teacher", default=None)
    ev.add_argument("--student", action="append", required=True, help="student directory (repeatable)")
    ev.add_argument("--data", default=None, help="as for distill; classifiers: a labelled .csv/.jsonl")
    ev.add_argument("--mode", default=None, help="default: the mode the student was distilled for")
    ev.add_argument("--n", type=int, default=500, help="held-out texts to evaluate")
    ev.add_argument("--heldout", type=float, default=0.05)
    ev.add_argument("--private", type=int, default=0, help="also run this many texts privately")
    ev.add_argument("--json", default=None, help="write the numbers here")
    ev.set_defaults(fn=evaluate_cmd)
    co = sub.add_parser("corpus", help="write WordNet's sentences (apt-get install wordnet-base) to a file")
    co.add_argument("--out", required=True)
    co.add_argument("--wordnet-dir", default="/usr/share/wordnet")
    co.set_defaults(fn=corpus_cmd)
    m = sub.add_parser("mlp-demo", help="the runtime demo: a private 2-layer MLP")
    m.add_argument("--netsim", default=None)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--timeout", type=float, default=600.0)
    m.set_defaults(fn=mlp_demo)
    args = p.parse_args(argv)
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
