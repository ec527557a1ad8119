"""Model design step: distil a HuggingFace model into the student that SecFormer's protocols
compute (2Quad attention; Quad GeLU too in ``mpcformer`` mode), and measure what it keeps.

- :mod:`secformer.distill.data` -- local text files and the WordNet corpus;
- :mod:`secformer.distill.student` -- teacher and student as HF torch models;
- :mod:`secformer.distill.train` -- two-stage layer-wise distillation with checkpoints;
- :mod:`secformer.distill.evaluate` -- teacher vs student, plaintext and private.
"""

from secformer.distill.train import DistillConfig, DistillResult, distill
from secformer.models.hf import model_mode

__all__ = ["DistillConfig", "DistillResult", "distill", "model_mode"]
