"""A small random-weight BERT in HF format with MiniLM's tokenizer (for process-level tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

from secformer.models.hf import TOKENIZER_FILES


def make_tiny_bert(
    path: Path, layers: int = 2, hidden: int = 64, seed: int = 0, init_std: float = 0.02, labels: int = 0
) -> Path:
    """Write ``BertModel`` with random weights (vocab of MiniLM's tokenizer) to ``path``.

    ``init_std`` well above BERT's 0.02 gives peaked attention, so that approximations of
    softmax change the output measurably (as they do in trained models)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    from secformer.models.hf import default_model_dir

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
        intermediate_size=4 * hidden,
        max_position_embeddings=128,
        initializer_range=init_std,
        num_labels=max(labels, 2),
    )
    (BertForSequenceClassification if labels else BertModel)(cfg).eval().save_pretrained(path)
    src = Path(default_model_dir())
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copy(src / f, path / f)
    return path
