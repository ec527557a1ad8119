"""What the client (P1) may learn from a query: one result, the one the task needs.

Every revealed value is a data point for model extraction. With the CLS row of ``hidden`` and
``pooled`` (or ``pooled`` and ``logits``) a client gets input/output pairs of a linear layer and
recovers its weights by least squares after about H + 1 queries; GPT-2's ``hidden`` with its
``logits`` gives the whole tied embedding matrix. So a query reveals exactly one result:

    head            result (default)   reduced form
    none / pooler   embedding          (mean over the unmasked tokens, pooled privately)
    classifier      logits (1, C)      label  (argmax computed privately: only the index)
    lm              next_logits (1, V) token  (argmax computed privately: only the token id)

Intermediate values (``hidden``, ``pooled``, ``embedding`` of a classifier, all positions'
``logits``) are revealed only when the model owner (P0) names them in ``unsafe_reveal``: they
let the client extract the head's weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from secformer.errors import ProtocolError
from secformer.models.hf import ModelSpec

RESULTS: dict[str, tuple[str, str | None]] = {
    "none": ("embedding", None),
    "pooler": ("embedding", None),
    "classifier": ("logits", "label"),
    "lm": ("next_logits", "token"),
}
RISK = "intermediate outputs let the client recover the model's head weights by least squares over many queries"


def task_results(spec: ModelSpec) -> tuple[str, ...]:
    """The results a client may ask for without the model owner's consent."""
    full, reduced = RESULTS[spec.head]
    return (full,) if reduced is None else (full, reduced)


def available(spec: ModelSpec) -> tuple[str, ...]:
    """Every output name the model can produce."""
    names = [*task_results(spec), "hidden", "embedding"]
    if spec.head in ("pooler", "classifier"):
        names.append("pooled")
    if spec.head in ("classifier", "lm"):
        names.append("logits")
    return tuple(dict.fromkeys(names))


def check_request(spec: ModelSpec, requested: Iterable[str], unsafe: Iterable[str] = ()) -> tuple[str, ...]:
    """The validated request: exactly one task result, plus intermediates only if P0 allows them.

    Raises :class:`ProtocolError` naming what was refused (run by the model owner, P0).
    """
    req = tuple(dict.fromkeys(str(r) for r in requested))
    allowed_extra = {str(u) for u in unsafe}
    unknown = [r for r in req if r not in available(spec)]
    if unknown:
        raise ProtocolError(
            f"unknown output(s) {unknown} for a {spec.arch} model with head {spec.head!r}; "
            f"choose from {list(available(spec))}"
        )
    results = [r for r in req if r in task_results(spec)]
    if len(results) != 1:
        raise ProtocolError(f"a query reveals exactly one result, one of {list(task_results(spec))}; got {list(req)}")
    refused = [r for r in req if r not in task_results(spec) and r not in allowed_extra]
    if refused:
        raise ProtocolError(
            f"the client asked for {refused}, which the model owner has not enabled ({RISK}); "
            "P0 must name them in unsafe_reveal (--unsafe-reveal)"
        )
    return req


def encode_request(req: Iterable[str]) -> np.ndarray:
    return np.frombuffer(json.dumps(list(req)).encode(), dtype=np.uint8).copy()


def decode_request(arr: np.ndarray) -> tuple[str, ...]:
    try:
        out = json.loads(np.asarray(arr, dtype=np.uint8).tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed output request from P1") from None
    if not isinstance(out, list) or not all(isinstance(x, str) for x in out) or len(out) > 16:
        raise ProtocolError("malformed output request from P1")
    return tuple(out)
