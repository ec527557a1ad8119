"""Fine-tune a HF encoder into a sequence classifier on a labelled task (the teacher that the
private students are distilled from).

The encoder (MiniLM by default) gets BERT's classification head (pooler and a linear layer over
the task's labels) and is trained with cross-entropy: AdamW, linear warm-up and decay, a seeded
data order, dropout as in BERT. The result is a ``BertForSequenceClassification`` directory with
the task's ``id2label``, which ``infer`` serves (``logits`` or ``label``) and ``distill`` distils;
its ``secformer.json`` records the task, the split sizes, the steps, the time and the accuracy.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secformer.distill.evaluate import macro_f1
from secformer.distill.tasks import Task
from secformer.errors import ConfigError
from secformer.models.hf import TOKENIZER_FILES, load_tokenizer


@dataclass
class FinetuneConfig:
    model: str
    out: str
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-4
    max_len: int = 64
    seed: int = 0
    threads: int = 0  # 0: torch's default


@dataclass
class FinetuneResult:
    out: Path
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> accuracy, macro F1


def _encode(tok: Any, texts: list[str], max_len: int) -> list[list[int]]:
    return tok(texts, truncation=True, max_length=max_len)["input_ids"]


def _batch(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def predict(model: Any, tok: Any, texts: list[str], max_len: int = 64, batch_size: int = 128) -> np.ndarray:
    """Class indices predicted by a torch classifier (float32, eval mode)."""
    model.eval()
    enc = _encode(tok, texts, max_len)
    pad = int(tok.pad_token_id)
    out = []
    for i in range(0, len(enc), batch_size):
        ids, mask = _batch(enc[i : i + batch_size], pad)
        out.append(model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(np.mean(y == p)), "macro F1": macro_f1(y, p)}


def finetune(cfg: FinetuneConfig, task: Task, progress: bool = True) -> FinetuneResult:
    """Train ``cfg.model`` with a classification head on ``task``'s train split; report and
    record accuracy and macro-F1 on its dev and test splits."""
    from transformers import BertForSequenceClassification

    texts, labels = task.splits["train"]
    if len(texts) < cfg.batch_size:
        raise ConfigError(f"the task's train split has {len(texts)} texts, fewer than one batch of {cfg.batch_size}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    label_id = {name: i for i, name in enumerate(task.labels)}
    model = BertForSequenceClassification.from_pretrained(
        cfg.model,
        num_labels=len(task.labels),
        id2label=dict(enumerate(task.labels)),
        label2id=label_id,
        local_files_only=True,
    ).float()
    tok = load_tokenizer(cfg.model)
    enc = _encode(tok, texts, cfg.max_len)
    y = np.array([label_id[lab] for lab in labels])
    pad = int(tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / cfg.steps))
    per_epoch = len(enc) // cfg.batch_size
    losses: list[tuple[int, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="finetune", unit="step")
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(enc))
        pick = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        ids, mask = _batch([enc[j] for j in pick], pad)
        loss = torch.nn.functional.cross_entropy(
            model(input_ids=ids, attention_mask=mask).logits, torch.tensor(y[pick], dtype=torch.long)
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append((step, loss.item()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    metrics = {}
    for split in ("dev", "test"):
        t, lab = task.splits[split]
        if t:
            metrics[split] = scores(np.array([label_id[x] for x in lab]), predict(model, tok, t, cfg.max_len))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        src = Path(cfg.model) / name
        if src.is_file():
            shutil.copy(src, out / name)
    meta = {
        "finetuned_from": str(Path(cfg.model).resolve()),
        "task": task.name,
        "data": task.source,
        "split sizes": {s: len(v[0]) for s, v in task.splits.items()},
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "threads")},
        "seconds": seconds,
        "metrics": metrics,
        "final loss (mean of last 50 steps)": float(np.mean([v for _, v in losses[-50:]])),
    }
    (out / "secformer.json").write_text(json.dumps(meta, indent=2))
    return FinetuneResult(out, seconds, losses, metrics)
