"""Teacher and student as HuggingFace torch models; the student computes what the private
runner computes in its approximation mode (the same formulas as :mod:`secformer.models.approx`).

- ``secformer``: softmax -> 2Quad, (s + c)^2 * keep / sum, c = 5; GeLU and LayerNorm kept
  (SecFormer's Fourier GeLU and Goldschmidt LayerNorm are accurate to ~1e-4).
- ``mpcformer``: 2Quad and GeLU -> Quad, 0.125 x^2 + 0.25 x + 0.5; 2Quad's division is the
  runner's: CrypTen's Newton reciprocal of the row mean (10 iterations, valid for means below
  ``RECIPROCAL_MAX``). The mode's LayerNorm is CrypTen's, whose Newton inverse square root holds
  for variances up to ``INV_SQRT_MAX``. Training adds penalties on row means above
  ``RANGE_TARGET`` and on LayerNorm input variances above ``VAR_TARGET``, so the student learns
  activations the private run can divide and normalise (trained with exact division and
  LayerNorm, the fine-tuned MiniLM's students leave both ranges and every private run stops).

2Quad is registered as a transformers attention implementation, so the student is a stock HF
model: ``save_pretrained`` writes a directory that ``secformer demo/infer`` load as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from secformer.errors import ConfigError
from secformer.models.hf import ModelSpec, load_spec

QUAD_C = 5.0  # the shift of SecFormer's 2Quad, as in secformer.models.approx.softmax_2quad
ATTN_IMPL = "secformer_2quad"
ATTN_IMPL_NEWTON = "mpcformer_2quad_newton"
NEWTON_ITERS = 10  # secformer.models.approx.reciprocal_newton, as the mpcformer mode runs it
RANGE_TARGET = 50.0  # row means are pushed below this (the runner refuses >= RECIPROCAL_MAX = 100)
RANGE_WEIGHT = 1e-3  # weight of the squared excess of a row mean
VAR_TARGET = 160.0  # LayerNorm input variances are pushed below this (CrypTen's inverse sqrt: <= 320)
# weighted penalties recorded while training (mpcformer students), added to the loss by train.py
RANGE_PENALTIES: list[torch.Tensor] = []
STUDENT_MODES = ("secformer", "mpcformer")


def _quad(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """2Quad's numerators q = (s + c)^2 on the kept positions, and how many positions each row keeps."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    q = (scores + QUAD_C) ** 2
    if attention_mask is None:
        return q, torch.full_like(q[..., :1], float(q.shape[-1]))
    # boolean (True: attend) or additive (0 where attended, a large negative number where not)
    keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask > -1.0
    keep = keep.to(q.dtype)[..., : key.shape[-2]]
    return q * keep, keep.sum(-1, keepdim=True).clamp_min(1.0)


def quad_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with 2Quad in place of softmax: p = (s + c)^2 keep / sum_j (s + c)^2 keep."""
    q, _ = _quad(query, key, attention_mask, scaling)
    p = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
    p = nn.functional.dropout(p, p=dropout, training=module.training)
    out = torch.matmul(p, value).transpose(1, 2).contiguous()
    return out, p


def reciprocal_newton(x: torch.Tensor, iters: int = NEWTON_ITERS) -> torch.Tensor:
    """CrypTen's reciprocal: y0 = 3 exp(1 - 2x) + 0.003 (exp by (1 + x/256)^256), then Newton."""
    y = 3 * (1 + (1 - 2 * x) / 256) ** 256 + 0.003
    for _ in range(iters):
        y = y * (2 - x * y)
    return y


def quad_newton_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MPCFormer's 2Quad as the private mpcformer mode computes it: p = q recip(mean q) / n,
    q = (s + c)^2 over the n kept positions (secformer.models.approx.softmax_2quad_newton)."""
    from secformer.protocols.crypten import RECIPROCAL_MAX

    q, n = _quad(query, key, attention_mask, scaling)
    mean = q.sum(-1, keepdim=True) / n
    if module.training:
        RANGE_PENALTIES.append(RANGE_WEIGHT * torch.relu(mean - RANGE_TARGET).pow(2).mean())
    p = q * reciprocal_newton(mean.clamp(max=RECIPROCAL_MAX)) / n
    p = nn.functional.dropout(p, p=dropout, training=module.training)
    out = torch.matmul(p, value).transpose(1, 2).contiguous()
    return out, p


class QuadGelu(nn.Module):
    """MPCFormer's Quad, 0.125 x^2 + 0.25 x + 0.5 (secformer.models.approx.gelu_quad)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.125 * x * x + 0.25 * x + 0.5


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPL, quad_attention_forward)
    AttentionInterface.register(ATTN_IMPL_NEWTON, quad_newton_attention_forward)
    for name in (ATTN_IMPL, ATTN_IMPL_NEWTON):
        AttentionMaskInterface.register(name, eager_mask)  # additive 4-D masks, as eager attention gets


def _model_class(spec: ModelSpec) -> Any:
    import transformers as tf

    if spec.arch == "gpt2":
        return tf.GPT2LMHeadModel if spec.head == "lm" else tf.GPT2Model
    return tf.BertForSequenceClassification if spec.head == "classifier" else tf.BertModel


def load_teacher(model_dir: str | Path) -> tuple[ModelSpec, nn.Module]:
    """The original model (eager softmax attention, so attention matrices can be read)."""
    spec = load_spec(model_dir)
    model = _model_class(spec).from_pretrained(str(model_dir), attn_implementation="eager", local_files_only=True)
    return spec, model.float().eval()


def make_student(model_dir: str | Path, mode: str) -> tuple[ModelSpec, nn.Module]:
    """The teacher's weights under ``mode``'s approximations (trainable)."""
    if mode not in STUDENT_MODES:
        raise ConfigError(f"student mode must be one of {STUDENT_MODES}, got {mode!r}")
    _register()
    spec = load_spec(model_dir)
    impl = ATTN_IMPL_NEWTON if mode == "mpcformer" else ATTN_IMPL
    model = _model_class(spec).from_pretrained(str(model_dir), attn_implementation=impl, local_files_only=True)
    model = model.float()
    if mode == "mpcformer":
        set_quad_gelu(model)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.register_forward_pre_hook(_variance_penalty)
    return spec, model


def _variance_penalty(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
    """Training an mpcformer student: how far LayerNorm input variances exceed ``VAR_TARGET``
    (relative, squared), so they stay where CrypTen's inverse square root converges."""
    if module.training:
        v = args[0].float().var(-1, unbiased=False)
        RANGE_PENALTIES.append(torch.relu(v / VAR_TARGET - 1).pow(2).mean())


def set_quad_gelu(model: nn.Module) -> None:
    n = 0
    for m in model.modules():
        if hasattr(m, "intermediate_act_fn"):  # BERT
            m.intermediate_act_fn = QuadGelu()
            n += 1
        elif hasattr(m, "act") and m.__class__.__name__ == "GPT2MLP":
            m.act = QuadGelu()
            n += 1
    if n == 0:
        raise ConfigError("found no GeLU to replace in this model")
