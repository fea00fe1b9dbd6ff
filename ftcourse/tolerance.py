"""How close is "equal"? The one tolerance rule for comparing two float computations of one thing.

The tests and the chapters use it wherever ours is compared with a library, or with itself
computed another way. Two correct implementations of one float computation differ only in
rounding: they add in other orders (blocked or pairwise sums, AVX2's 8 lanes or AVX-512's 16,
fused kernels or not). Each rounding errs by at most u = eps/2 of the value it rounds; n of
them, of unrelated signs, add up like a random walk (Higham & Mary 2019, "A new approach to
probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5)): |error| <= lambda *
sqrt(n) * u * scale, except with probability 2 exp(-lambda^2 / 2). Hence the rule

    bound = C * eps(dtype) * sqrt(n) * scale,     C = 4 (lambda = 8: a false alarm < 3e-14 per value)

- eps: `torch.finfo(dtype).eps` of the dtype the computation ran in (float32: 1.2e-7);
- n: the roundings behind the value, summed along its longest path: a matmul's inner dimension,
  a network's sums layer after layer (`transformer_path`);
- scale: the magnitude of the values compared (default: the largest |expected|).

The bound holds on every CPU because it assumes nothing about summation order. It does not cover
computations that amplify rounding (an optimizer dividing by a near-zero second moment: see
`adam_bound`), and it is not a tolerance for a different dtype or a different formula: those are
different results, and a test says so instead of widening the bound. Where a computation is
bit-identical by construction, the test asserts `torch.equal` and says why.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import Tensor

C = 4.0


def bound(dtype: torch.dtype, n: int, scale: float) -> float:
    """The largest difference rounding can explain: C * eps(dtype) * sqrt(n) * scale."""
    if n < 1 or scale < 0:
        raise ValueError(f"bound needs n >= 1 and scale >= 0, got n={n}, scale={scale}.")
    return C * torch.finfo(dtype).eps * math.sqrt(n) * scale


def transformer_path(config: Any, tokens: int) -> int:
    """Roundings from the embeddings to one logit of a Llama-shaped model (an HF config).

    Per layer: the q/k/v projections (hidden), the scores (head_dim), the softmax's sum and the
    weighted sum of values (tokens each), o_proj (heads x head_dim), gate and up (hidden), down
    (intermediate); then the head (hidden). The loss adds `config.vocab_size` (its logsumexp).
    """
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_layer = hidden + head_dim + 2 * tokens + heads * head_dim + hidden + config.intermediate_size
    return config.num_hidden_layers * per_layer + hidden


def loss_path(config: Any, tokens: int, count: int) -> int:
    """Roundings behind a loss summed or averaged over `count` tokens: the path to a logit, the
    logsumexp over the vocabulary, then the sum over the tokens."""
    return transformer_path(config, tokens) + config.vocab_size + count


def adam_bound(gradient_bound: float, lr: float, steps: int, adam_eps: float = 1e-8) -> float:
    """How far rounding in the gradients can move a weight through `steps` AdamW steps.

    An update is lr * m / (sqrt(v) + adam_eps); a change dg in a gradient entry changes it by at
    most lr * |dg| / adam_eps (the slope where the entry is near zero), and changes add up over steps.
    """
    return steps * lr * gradient_bound / adam_eps


def assert_close(actual: Any, expected: Any, *, n: int | None = None, scale: float | None = None,
                 dtype: torch.dtype | None = None, limit: float | None = None, msg: str = "") -> None:
    """Assert |actual - expected| <= bound(dtype, n, scale) everywhere (or <= `limit`).

    Args:
        actual, expected: tensors (or Python floats: give `dtype`, the one they were computed in).
        n: the roundings behind each value (see the module docstring).
        scale: the magnitude of the values; default: the largest |expected|.
        dtype: the computation's dtype; default: `expected.dtype`.
        limit: instead of n and scale, a bound derived from the rule elsewhere (`adam_bound`).
    """
    if (n is None) == (limit is None):
        raise TypeError("assert_close takes n (and optionally scale) or limit, not both or neither.")
    if dtype is None and not isinstance(expected, Tensor):
        raise TypeError("assert_close of Python numbers needs the dtype they were computed in.")
    dtype = dtype or expected.dtype
    # Python numbers are held in float64, so the comparison itself rounds nothing away.
    expected_t, actual_t = (x if isinstance(x, Tensor) else torch.tensor(x, dtype=torch.float64)
                            for x in (expected, actual))
    actual_t = actual_t.to(expected_t.dtype)
    if limit is None:
        if scale is None:
            scale = expected_t.abs().max().item() if expected_t.numel() else 0.0
        limit = bound(dtype, n, scale)
        rule = f"C * eps({dtype}) * sqrt({n}) * {scale:.3g} = {limit:.3g}"
    else:
        rule = f"derived bound {limit:.3g}"
    _record(actual_t, expected_t, limit, msg)
    torch.testing.assert_close(actual_t, expected_t, rtol=0, atol=limit,
                               msg=lambda message: f"{msg}{': ' if msg else ''}{message}\n(rule: {rule})")


def _record(actual: Tensor, expected: Tensor, limit: float, msg: str) -> None:
    # FTCOURSE_TOLERANCE_LOG=FILE appends each comparison's worst difference and its bound, so the
    # margin of the rule can be read off a run on any CPU.
    log = os.environ.get("FTCOURSE_TOLERANCE_LOG")
    if not log:
        return
    worst = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    with open(log, "a") as file:
        file.write(json.dumps({"test": test, "what": msg, "worst": worst, "bound": limit,
                               "capability": torch.backends.cpu.get_cpu_capability()}) + "\n")
