"""Exercises inside the transformer: RMSNorm, causal attention, the parameters of one layer;
predicting the FLOPs of a long context; an open experiment on key/value heads and the FFN's share.

The oracles: `ftcourse.transformer.RMSNorm`, torch's `scaled_dot_product_attention` (the kernel
transformers' Llama calls; ours adds projections and RoPE around the same arithmetic), and
`ftcourse.params.count_parameters`, which tests/test_params.py checks against real models.
Shapes: B batch, H heads, T positions, hd head size, D hidden size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.models import EMBEDDED_MODEL
from ftcourse.params import REAL_MODELS, count_parameters
from ftcourse.transformer import RMSNorm


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension: Llama's normalisation.

    Unlike LayerNorm it neither subtracts the mean nor adds a bias; it only rescales each vector.
    """
    mean_square = x.pow(2).mean(dim=-1, keepdim=True)       # (..., 1): one scale per vector
    return x * torch.rsqrt(mean_square + eps) * weight


@exercise(chapter="01_transformer_internals", solution=rms_norm,
          task="Normalise x (..., D) by the root of the mean of its squares over the last dimension "
               "(plus eps inside the root), then scale by weight (D,).")
def check_rms_norm(answer: Callable[..., Tensor]) -> None:
    """Compare with `RMSNorm` on inputs whose mean is not 0, with a small and a large eps."""
    generator = torch.Generator().manual_seed(0)
    # The second case has small inputs and a large eps, so a misplaced or missing eps shows.
    for scale, eps in [(3.0, 1e-6), (0.05, 1e-2)]:
        x = (torch.randn(2, 5, 16, generator=generator) + 0.5) * scale   # mean != 0: not LayerNorm
        weight = torch.randn(16, generator=generator)
        _check_rms_norm_case(answer, x, weight, eps)


def _check_rms_norm_case(answer: Callable[..., Tensor], x: Tensor, weight: Tensor, eps: float) -> None:
    """One input of `check_rms_norm`, with the values the common mistakes give on it."""
    oracle = RMSNorm(x.shape[-1], eps)
    with torch.no_grad():
        oracle.weight.copy_(weight)
        want = oracle(x)
    mean_square = x.pow(2).mean(-1, keepdim=True)
    centred = x - x.mean(-1, keepdim=True)
    divided = lambda denominator: x / denominator * weight     # what each mistake divides by
    got = answer(x.clone(), weight.clone(), eps)
    # RMSNorm computes in float32 whatever the input, so float32 rounding sets the tolerance.
    expect_close(got, want, f"rms_norm(x, weight, eps={eps:g})", atol=1e-5, hints={
        "you subtracted the mean first: that is LayerNorm. RMSNorm divides x itself by the "
        "root of mean(x^2).": centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight,
        "you divided by the standard deviation (x.var()): use the mean square, "
        "x.pow(2).mean(-1), which does not subtract the mean.":
            divided((x.var(-1, keepdim=True) + eps).sqrt()),
        "you divided by the standard deviation (x.var(unbiased=False)): use the mean square, "
        "x.pow(2).mean(-1), which does not subtract the mean.":
            divided((x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()),
        "you forgot to multiply by weight.": x / (mean_square + eps).sqrt(),
        "eps goes inside the square root: sqrt(mean(x^2) + eps).": divided(mean_square.sqrt() + eps),
        "you left out eps (it keeps the division safe for vectors near 0).": divided(mean_square.sqrt()),
        "you divided by the root of the sum of squares: take the mean (divide by D).":
            divided((x.pow(2).sum(-1, keepdim=True) + eps).sqrt()),
        "take the mean over the last dimension only (dim=-1, keepdim=True), not over every element.":
            divided((x.pow(2).mean() + eps).sqrt())})


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v, where each position reads only itself and earlier positions.

    Dividing by sqrt(hd) keeps the scores' spread independent of the head size; the causal mask
    is what lets a decoder learn to predict the next token without seeing it.
    """
    T, hd = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)                      # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))                    # row t: no column > t
    weights = torch.softmax(scores, dim=-1)                               # each row sums to 1
    return weights @ v                                                    # (B, H, T, hd)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, hidden: Tensor | None, dim: int = -1) -> Tensor:
    """Attention with a given scale, a mask of hidden (True) scores and a softmax dimension:
    the values that the common mistakes of `causal_attention` produce."""
    scores = q @ k.transpose(-2, -1) * scale
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=dim) @ v


@exercise(chapter="01_transformer_internals", solution=causal_attention,
          task="Given q, k, v of shape (B, H, T, hd), return softmax(q k^T / sqrt(hd)) v with a causal "
               "mask: position t may only attend to positions 0..t.")
def check_causal_attention(answer: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
    """Compare with torch's causal attention on two shapes, in float64."""
    generator = torch.Generator().manual_seed(0)
    for shape in [(2, 3, 7, 8), (1, 2, 5, 4)]:
        q, k, v = (torch.randn(*shape, generator=generator, dtype=torch.float64) for _ in range(3))
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        T, hd = shape[-2], shape[-1]
        future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
        what = f"causal_attention on q, k, v of shape {shape}"
        got = answer(q.clone(), k.clone(), v.clone())
        if isinstance(got, Tensor) and got.isnan().any():
            raise ExerciseFailed(f"{what}: the output has NaN, from a row whose every score is masked. "
                                 "A position may attend to itself: mask only the columns after it "
                                 "(triu(diagonal=1)).")
        expect_close(got, want, what, atol=1e-10, hints={
            "you forgot to divide the scores by sqrt(hd).": _attend(q, k, v, 1.0, future),
            "divide the scores by sqrt(hd), not by hd.": _attend(q, k, v, 1 / hd, future),
            "you forgot the causal mask: every position reads the future too.":
                _attend(q, k, v, 1 / math.sqrt(hd), None),
            "your mask hides the past instead of the future: hide the scores above the diagonal "
            "(column > row), e.g. torch.ones(T, T).triu(diagonal=1).bool().":
                _attend(q, k, v, 1 / math.sqrt(hd), future.T),
            "take the softmax over the keys (dim=-1), so that each query's weights sum to 1.":
                _attend(q, k, v, 1 / math.sqrt(hd), future, dim=-2)})


def llama_layer_parameters(config: dict) -> int:
    """Parameters of one Llama decoder layer (no biases), from the sizes in its config.

    Attention: q and o are D x H*hd, k and v only D x K*hd (K key/value heads shared by the H
    query heads); the SwiGLU FFN has three D x F matrices; and there are two RMSNorm weights.
    """
    D, F = config["hidden_size"], config["intermediate_size"]
    H, K = config["num_attention_heads"], config["num_key_value_heads"]
    hd = D // H                                   # head size
    attention = 2 * D * H * hd + 2 * D * K * hd   # q_proj, o_proj; k_proj, v_proj
    ffn = 3 * D * F                               # gate_proj, up_proj, down_proj
    norms = 2 * D                                 # input_layernorm, post_attention_layernorm
    return attention + ffn + norms


@exercise(chapter="01_transformer_internals", solution=llama_layer_parameters,
          task="From a config dict (hidden_size, intermediate_size, num_attention_heads, "
               "num_key_value_heads; head size = hidden_size // num_attention_heads), return the "
               "number of parameters of one decoder layer: attention, SwiGLU FFN and two RMSNorms.")
def check_llama_layer_parameters(answer: Callable[[dict], int]) -> None:
    """Compare with `count_parameters` on real configs, with and without grouped heads."""
    tiny = json.loads((EMBEDDED_MODEL / "config.json").read_text())
    # Multi-head attention first, then grouped key/value heads (K < H).
    configs = {name: REAL_MODELS[name] for name in ("Llama-2-7B", "Mistral-7B", "SmolLM2-135M")}
    for name, config in {**configs, "the ftcourse tiny model": tiny}.items():
        want = sum(count_parameters(config).per_layer.values())
        D, F = config["hidden_size"], config["intermediate_size"]
        K, H = config["num_key_value_heads"], config["num_attention_heads"]
        gqa_saving = 2 * D * (H - K) * (D // H)
        got = answer(dict(config))
        expect_number(got, want, f"llama_layer_parameters({name})", rel=0, hints={
            "k_proj and v_proj have num_key_value_heads * head_dim outputs, not hidden_size: "
            "grouped-query attention shares each key/value head among several query heads.":
                want + gqa_saving,
            "the SwiGLU FFN has three matrices (gate_proj, up_proj: D x F; down_proj: F x D).":
                want - D * F,
            "you left out the two RMSNorm weights of a layer (D each).": want - 2 * D,
            "a layer has two RMSNorms (before attention and before the FFN), each with D weights.":
                want - D})


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("long_context_flops", chapter="01_transformer_internals",
        question="Llama-3-8B reads a context of 32,768 tokens instead of 512. How many times the forward "
                 "FLOPs per token at 512 does a token then cost, by flops_per_token (the count of this "
                 "chapter's table)?",
        form=Number(rel=0.25, low=0, unit="times"))


def _shares_fall_with_more_kv_heads(finding: dict) -> str | None:
    # More key/value heads mean larger k_proj and v_proj, with the FFN unchanged: a count, no noise.
    kv_heads, shares = finding["kv_heads"], finding["ffn_share_of_layers"]
    if len(kv_heads) != len(shares) or len(set(kv_heads)) != len(kv_heads):
        return None                                  # one_value_per says what is wrong
    pairs = sorted(zip(kv_heads, shares))
    if all(later <= earlier for (_, earlier), (_, later) in zip(pairs, pairs[1:])):
        return None                                  # equal is fine: shares rounded to 2 digits
    return ("ffn_share_of_layers rises as kv_heads grows, but every extra key/value head adds "
            "parameters to k_proj and v_proj and none to the FFN: check the order of your two lists")


experiment("kv_heads_ffn_share", chapter="01_transformer_internals",
           question="How does the number of key/value heads change the FFN's share of a layer's parameters, "
                    "and so the article's two-thirds? Take a real model's config, set num_key_value_heads to "
                    "three values or more (each dividing num_attention_heads), count each with "
                    "count_parameters, and say where the two-thirds holds and why.",
           fields={"kv_heads": Field(list, item=int, low=1, min_len=3),
                   "ffn_share_of_layers": Field(list, item=float, low=0, high=1, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("kv_heads", ["ffn_share_of_layers"], "setting", "settings"),
                   _shares_fall_with_more_kv_heads))
