"""Layer-wise distillation of a HF model into its 2Quad student (MPCFormer's recipe, as the
SecFormer paper uses it).

Stage 1 (``stage1_steps``): per layer, MSE between student and teacher attention matrices
and hidden states (embedding output included), over real tokens only.
Stage 2 (``stage2_steps``): the output: MSE of the mean-pooled sentence embedding for encoder
models without a task head, MSE of logits for classifiers, KL of next-token distributions for
GPT-2 LM heads.

Runs are deterministic for a seed (data order, initialisation of nothing new), checkpoint
every ``checkpoint_every`` steps to ``out/checkpoint.pt`` and resume from it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from secformer.distill.student import RANGE_PENALTIES, STUDENT_MODES, load_teacher, make_student
from secformer.errors import ConfigError
from secformer.models.hf import TOKENIZER_FILES, load_tokenizer


@dataclass
class DistillConfig:
    teacher: str
    out: str
    mode: str = "secformer"
    stage1_steps: int = 600
    stage2_steps: int = 300
    batch_size: int = 32
    lr: float = 1e-4
    max_len: int = 64
    seed: int = 0
    checkpoint_every: int = 100
    threads: int = 0  # 0: torch's default

    def key(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed."""
        d = asdict(self)
        for k in ("out", "checkpoint_every", "threads"):
            d.pop(k)
        return d


@dataclass
class DistillResult:
    out: Path
    steps: int
    seconds: float
    losses: list[tuple[int, int, float]] = field(default_factory=list)  # (step, stage, loss)


class Batches:
    """Tokenised texts in a seeded order; batch ``step`` is the same whenever it is asked for."""

    def __init__(self, model_dir: str, texts: list[str], batch_size: int, max_len: int, seed: int) -> None:
        tok = load_tokenizer(model_dir)
        if tok.pad_token is None:  # GPT-2
            tok.pad_token = tok.eos_token
        self.enc = tok(texts, truncation=True, max_length=max_len)["input_ids"]
        self.pad = int(tok.pad_token_id)
        self.n, self.bs, self.seed = len(texts), batch_size, seed
        if self.n < batch_size:
            raise ConfigError(f"{self.n} texts are fewer than one batch of {batch_size}")

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_epoch = self.n // self.bs
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        rows = [self.enc[j] for j in order[i * self.bs : (i + 1) * self.bs]]
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for r, toks in enumerate(rows):
            ids[r, : len(toks)] = torch.tensor(toks)
            mask[r, : len(toks)] = 1
        return ids, mask


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens: a, b (B, L, ...), mask (B, L)."""
    m = mask.to(a.dtype).reshape(*mask.shape, *([1] * (a.dim() - 2)))
    per = ((a - b) ** 2 * m).sum()
    return per / (m.sum() * (a[0, 0].numel()))


def _attn_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, heads, L, L) attention matrices, rows of real query tokens only."""
    return _masked_mse(a.transpose(1, 2), b.transpose(1, 2), mask)


def embedding(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pooling over real tokens (secformer.models.forward's ``embedding``)."""
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def stage1_loss(s_out: Any, t_out: Any, mask: torch.Tensor) -> torch.Tensor:
    hs = sum(_masked_mse(a, b, mask) for a, b in zip(s_out.hidden_states, t_out.hidden_states, strict=True))
    att = sum(_attn_mse(a, b, mask) for a, b in zip(s_out.attentions, t_out.attentions, strict=True))
    # attention probabilities are ~1/L: scale them to the hidden states' order of magnitude
    return hs / len(s_out.hidden_states) + 100.0 * att / len(s_out.attentions)


def stage2_loss(head: str, s_out: Any, t_out: Any, mask: torch.Tensor) -> torch.Tensor:
    if head == "lm":
        logp = torch.log_softmax(s_out.logits, -1)
        q = torch.softmax(t_out.logits, -1)
        kl = (q * (torch.log(q.clamp_min(1e-12)) - logp)).sum(-1)
        return (kl * mask).sum() / mask.sum()
    if head == "classifier":
        return ((s_out.logits - t_out.logits) ** 2).mean()
    hs, ht = s_out.hidden_states[-1], t_out.hidden_states[-1]
    return ((embedding(hs, mask) - embedding(ht, mask)) ** 2).mean() * hs.shape[-1] / 10.0


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def distill(
    cfg: DistillConfig,
    texts: list[str],
    resume: bool = True,
    progress: bool = True,
    data_source: str = "",
    stop_after: int | None = None,
) -> DistillResult:
    """Distil ``cfg.teacher`` into its ``cfg.mode`` student on ``texts``; write an HF model
    directory to ``cfg.out`` (plus ``secformer.json``: mode, data, steps, losses).

    ``stop_after``: leave after that many steps with a checkpoint (a time-boxed or interrupted
    run); the next call with ``resume`` continues where it stopped, with the same result as an
    uninterrupted run."""
    if cfg.mode not in STUDENT_MODES:
        raise ConfigError(f"mode must be one of {STUDENT_MODES}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec, teacher = load_teacher(cfg.teacher)
    _, student = make_student(cfg.teacher, cfg.mode)
    for p in teacher.parameters():
        p.requires_grad_(False)
    batches = Batches(cfg.teacher, texts, cfg.batch_size, cfg.max_len, cfg.seed)
    total = cfg.stage1_steps + cfg.stage2_steps
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / max(1, total)))
    start, losses, seconds = 0, [], 0.0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["key"] != cfg.key():
            raise ConfigError(
                f"{ckpt} belongs to another run ({state['key']}); use a new --out or --no-resume to start over"
            )
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, losses, seconds = state["step"], state["losses"], state["seconds"]
        torch.set_rng_state(state["torch_rng"])
    student.train()
    # dropout off: the student must imitate the deterministic teacher
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=f"distill {cfg.mode}", unit="step")
    t0 = time.perf_counter() - seconds
    for step in range(start, total):
        stage = 1 if step < cfg.stage1_steps else 2
        ids, mask = batches(step)
        with torch.no_grad():
            t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        RANGE_PENALTIES.clear()
        s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=stage == 1)
        loss = stage1_loss(s_out, t_out, mask) if stage == 1 else stage2_loss(spec.head, s_out, t_out, mask)
        if RANGE_PENALTIES:  # mpcformer: keep row means and variances where CrypTen's Newton steps work
            loss = loss + sum(RANGE_PENALTIES) / len(RANGE_PENALTIES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append((step, stage, float(loss.detach())))
        if bar is not None:
            bar.set_postfix(stage=stage, loss=f"{losses[-1][2]:.4f}")
            bar.update(1)
        done = step + 1
        stopping = stop_after is not None and done >= stop_after and done < total
        if (done % cfg.checkpoint_every == 0 and done < total) or stopping:
            _atomic_save(
                {
                    "key": cfg.key(),
                    "step": done,
                    "student": student.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "losses": losses,
                    "seconds": time.perf_counter() - t0,
                    "torch_rng": torch.get_rng_state(),
                },
                ckpt,
            )
        if stopping:
            if bar is not None:
                bar.close()
            return DistillResult(out, done, time.perf_counter() - t0, losses)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    student.eval()
    save_student(student, cfg, out, losses, seconds, data_source, len(texts))
    if ckpt.exists():
        ckpt.unlink()
    return DistillResult(out, total, seconds, losses)


def save_student(
    student: nn.Module, cfg: DistillConfig, out: Path, losses: list, seconds: float, data: str, n_texts: int
) -> None:
    """An HF directory (config, safetensors, tokenizer) plus ``secformer.json``."""
    student.config.secformer_mode = cfg.mode
    student.config._attn_implementation = "eager"  # what other tools load it with; ours use the mode
    student.save_pretrained(out)
    src = Path(cfg.teacher)
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    meta = {
        "mode": cfg.mode,
        "teacher": str(src.resolve()),
        "config": cfg.key(),
        "data": data,
        "texts": n_texts,
        "seconds": round(seconds, 1),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "torch": torch.__version__,
    }
    (out / "secformer.json").write_text(json.dumps(meta, indent=2))
