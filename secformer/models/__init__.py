"""Private inference of HuggingFace Transformer models.

- :mod:`secformer.models.hf` -- read a HF model directory (config, weights, tokenizer) offline.
- :mod:`secformer.models.forward` -- BERT and GPT-2 written once against a small backend
  interface (linear, matmul, gelu, softmax, layernorm, tanh, embedding).
- :mod:`secformer.models.approx` -- the approximation modes in float64 (plaintext backend).
- :mod:`secformer.models.private` -- the MPC backend and the program both parties run.
"""

MODES = ("secformer", "crypten", "puma", "mpcformer")
