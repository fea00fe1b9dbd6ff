"""Wrong answers planted in the exercises of chapters 05-08, each a mistake learners make.

`PLANTED[name]` lists (wrong answer, a fragment of the message the check must give for it):
tests/test_exercises.py asserts that every check rejects each of them with that message, so
every check is shown to fail, and to say why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ftcourse.quant import NF4_CODE

# ---------------------------------------------------------------- 05 LoRA


def forward_without_scaling(x: Tensor, W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    return x @ W0.T + x @ A.T @ B.T


def forward_r_over_alpha(x: Tensor, W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    return x @ W0.T + (r / alpha) * (x @ A.T @ B.T)


def forward_update_transposed(x: Tensor, W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    return x @ W0.T + (alpha / r) * (x @ B @ A)


def forward_update_only(x: Tensor, W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    return (alpha / r) * (x @ A.T @ B.T)


def merge_without_scaling(W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    return W0 + B @ A


def merge_in_place(W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    W0 += (alpha / r) * (B @ A)
    return W0


def merge_transposed(W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    return (W0 + (alpha / r) * (B @ A)).T


def _shapes(config: dict, kv_heads: int) -> dict[str, tuple[int, int]]:
    D, F, H = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    hd = D // H
    return {"q_proj": (D, H * hd), "k_proj": (D, kv_heads * hd), "v_proj": (D, kv_heads * hd),
            "o_proj": (H * hd, D), "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}


def count_one_layer(config: dict, targets: tuple[str, ...], r: int) -> int:
    shapes = _shapes(config, config["num_key_value_heads"])
    return sum(r * (d_in + d_out) for name, (d_in, d_out) in shapes.items() if name in targets)


def count_ignoring_gqa(config: dict, targets: tuple[str, ...], r: int) -> int:
    shapes = _shapes(config, config["num_attention_heads"])
    return config["num_hidden_layers"] * sum(r * (d_in + d_out) for name, (d_in, d_out) in shapes.items()
                                             if name in targets)


def count_full_matrices(config: dict, targets: tuple[str, ...], r: int) -> int:
    shapes = _shapes(config, config["num_key_value_heads"])
    return config["num_hidden_layers"] * sum(d_in * d_out for name, (d_in, d_out) in shapes.items()
                                             if name in targets)


# ---------------------------------------------------------------- 05b LoRA in practice


def targets_by_ending(names: list[str], targets: tuple[str, ...]) -> list[str]:
    return [name for name in names if any(name.endswith(target) for target in targets)]


def targets_by_last_part(names: list[str], targets: tuple[str, ...]) -> list[str]:
    return [name for name in names if name.split(".")[-1] in targets]


def targets_after_a_dot(names: list[str], targets: tuple[str, ...]) -> list[str]:
    return [name for name in names if any(name.endswith("." + target) for target in targets)]


def targets_by_target(names: list[str], targets: tuple[str, ...]) -> list[str]:
    return [name for target in targets for name in names if name == target or name.endswith("." + target)]


def _rank_cost(config: dict, targets: tuple[str, ...]) -> int:
    from ftcourse.params import linear_shapes
    shapes = linear_shapes(config)
    return config["num_hidden_layers"] * sum(sum(shapes[name]) for name in targets)


def rank_rounded(config: dict, targets: tuple[str, ...], budget: int) -> int:
    return round(budget / _rank_cost(config, targets))


def rank_one_layer(config: dict, targets: tuple[str, ...], budget: int) -> int:
    return budget // (_rank_cost(config, targets) // config["num_hidden_layers"])


# ---------------------------------------------------------------- 06 QLoRA


def indices_by_max(block: Tensor) -> Tensor:
    scaled = block / block.max()
    return (scaled[:, None] - NF4_CODE[None, :]).abs().argmin(dim=1)


def indices_evenly_spaced(block: Tensor) -> Tensor:
    scaled = block / block.abs().max()
    return torch.round((scaled + 1) * 7.5).long()


def indices_as_values(block: Tensor) -> Tensor:
    scaled = block / block.abs().max()
    return NF4_CODE[(scaled[:, None] - NF4_CODE[None, :]).abs().argmin(dim=1)]


def indices_unscaled(block: Tensor) -> Tensor:
    return (block[:, None] - NF4_CODE[None, :]).abs().argmin(dim=1)


def dequantize_dividing(indices: Tensor, absmax: float) -> Tensor:
    return NF4_CODE[indices] / absmax


def dequantize_unscaled(indices: Tensor, absmax: float) -> Tensor:
    return NF4_CODE[indices]


def dequantize_evenly_spaced(indices: Tensor, absmax: float) -> Tensor:
    return (indices / 7.5 - 1) * absmax


def bits_without_code(blocksize: int = 64, double_quant: bool = False, nested_blocksize: int = 256) -> float:
    return 8 / blocksize + 32 / (blocksize * nested_blocksize) if double_quant else 32 / blocksize


def bits_32bit_scales_always(blocksize: int = 64, double_quant: bool = False,
                             nested_blocksize: int = 256) -> float:
    return 4 + 32 / blocksize + (32 / (blocksize * nested_blocksize) if double_quant else 0)


def bits_no_second_level(blocksize: int = 64, double_quant: bool = False,
                         nested_blocksize: int = 256) -> float:
    return 4 + (8 if double_quant else 32) / blocksize


# ---------------------------------------------------------------- 07 soft prompts


def prompt_after_input(embeds: Tensor, attention_mask: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor]:
    B, N = embeds.shape[0], prompt.shape[0]
    return (torch.cat([embeds, prompt.expand(B, -1, -1)], dim=1),
            torch.cat([attention_mask, attention_mask.new_ones(B, N)], dim=1))


def mask_not_extended(embeds: Tensor, attention_mask: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor]:
    return torch.cat([prompt.expand(embeds.shape[0], -1, -1), embeds], dim=1), attention_mask


def mask_all_ones(embeds: Tensor, attention_mask: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor]:
    joined = torch.cat([prompt.expand(embeds.shape[0], -1, -1), embeds], dim=1)
    return joined, torch.ones(joined.shape[:2], dtype=attention_mask.dtype)


def _head_dim(config: dict) -> int:
    return config["hidden_size"] // config["num_attention_heads"]


def counts_all_heads(config: dict, num_virtual_tokens: int) -> tuple[int, int]:
    d, L = config["hidden_size"], config["num_hidden_layers"]
    return num_virtual_tokens * d, num_virtual_tokens * L * 2 * d


def counts_without_keys_and_values(config: dict, num_virtual_tokens: int) -> tuple[int, int]:
    d, L = config["hidden_size"], config["num_hidden_layers"]
    width = config["num_key_value_heads"] * _head_dim(config)
    return num_virtual_tokens * d, num_virtual_tokens * L * width


def counts_prompt_per_layer(config: dict, num_virtual_tokens: int) -> tuple[int, int]:
    d, L = config["hidden_size"], config["num_hidden_layers"]
    width = config["num_key_value_heads"] * _head_dim(config)
    return num_virtual_tokens * d * L, num_virtual_tokens * L * 2 * width


def prefix_keys_first(prefix: Tensor, num_layers: int, num_heads: int, head_dim: int,
                      batch_size: int) -> list[tuple[Tensor, Tensor]]:
    rows = prefix.view(prefix.shape[0], 2, num_layers, num_heads, head_dim).permute(2, 1, 3, 0, 4)
    return [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in rows]


def prefix_swapped(prefix: Tensor, num_layers: int, num_heads: int, head_dim: int,
                   batch_size: int) -> list[tuple[Tensor, Tensor]]:
    rows = prefix.view(prefix.shape[0], num_layers, 2, num_heads, head_dim).permute(1, 2, 3, 0, 4)
    return [(v.expand(batch_size, -1, -1, -1), k.expand(batch_size, -1, -1, -1)) for k, v in rows]


def prefix_tokens_before_heads(prefix: Tensor, num_layers: int, num_heads: int, head_dim: int,
                               batch_size: int) -> list[tuple[Tensor, Tensor]]:
    rows = prefix.view(prefix.shape[0], num_layers, 2, num_heads, head_dim).permute(1, 2, 0, 3, 4)
    return [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in rows]


# ---------------------------------------------------------------- 07b adapters and IA3


def ia3_output_always(x: Tensor, W: Tensor, scale: Tensor, feedforward: bool) -> Tensor:
    return (x @ W.T) * scale


def ia3_adding(x: Tensor, W: Tensor, scale: Tensor, feedforward: bool) -> Tensor:
    return (x + scale) @ W.T if feedforward else x @ W.T + scale


def adapter_without_residual(h: Tensor, down_W: Tensor, down_b: Tensor, up_W: Tensor, up_b: Tensor) -> Tensor:
    return torch.nn.functional.silu(h @ down_W.T + down_b) @ up_W.T + up_b


def adapter_with_relu(h: Tensor, down_W: Tensor, down_b: Tensor, up_W: Tensor, up_b: Tensor) -> Tensor:
    return h + torch.relu(h @ down_W.T + down_b) @ up_W.T + up_b


# ---------------------------------------------------------------- 08 evaluation


def _resampled_means(scores: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return scores[rng.integers(0, len(scores), size=(n_resamples, len(scores)))].mean(axis=1)


def ci_full_tail_each_side(scores: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[float, float]:
    tail = (1 - confidence) * 100
    low, high = np.percentile(_resampled_means(scores, n_resamples, seed), [tail, 100 - tail])
    return float(low), float(high)


def ci_of_scores(scores: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)


def ci_without_replacement(scores: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = np.array([rng.permutation(scores).mean() for _ in range(n_resamples)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def ci_other_draws(scores: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed + 1)
    means = scores[rng.integers(0, len(scores), size=(n_resamples, len(scores)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _lower_tail(wins: int, losses: int, inclusive: bool = True) -> float:
    n, k = wins + losses, min(wins, losses)
    return sum(math.comb(n, i) for i in range(k + inclusive)) / 2**n


def mcnemar_one_sided(wins: int, losses: int) -> float:
    return _lower_tail(wins, losses)


def mcnemar_uncapped(wins: int, losses: int) -> float:
    return 2 * _lower_tail(wins, losses)


def mcnemar_exclusive_tail(wins: int, losses: int) -> float:
    return min(1.0, 2 * _lower_tail(wins, losses, inclusive=False))


def mcnemar_chi_squared(wins: int, losses: int) -> float:
    return math.erfc(math.sqrt((wins - losses) ** 2 / (wins + losses) / 2))


def _word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def overlap_unnormalised(test_text: str, train_texts: list[str], n: int) -> float:
    grams = lambda text: {tuple(text.split()[i:i + n]) for i in range(len(text.split()) - n + 1)}
    seen = set().union(*(grams(text) for text in train_texts))
    return len(grams(test_text) & seen) / len(grams(test_text))


def overlap_joined_training(test_text: str, train_texts: list[str], n: int) -> float:
    seen = set(_word_ngrams(" ".join(train_texts), n))
    test = set(_word_ngrams(test_text, n))
    return len(test & seen) / len(test)


def overlap_with_repeats(test_text: str, train_texts: list[str], n: int) -> float:
    seen = {gram for text in train_texts for gram in _word_ngrams(text, n)}
    test = _word_ngrams(test_text, n)
    return sum(gram in seen for gram in test) / len(test)


def overlap_count(test_text: str, train_texts: list[str], n: int) -> float:
    seen = {gram for text in train_texts for gram in _word_ngrams(text, n)}
    return len(set(_word_ngrams(test_text, n)) & seen)


PLANTED: dict[str, list[tuple[Callable, str]]] = {
    "ia3_forward": [(ia3_output_always, "scales its input"), (ia3_adding, "IA3 multiplies")],
    "bottleneck_adapter": [(adapter_without_residual, "add h, the residual"),
                           (adapter_with_relu, "used ReLU")],
    "lora_forward": [(forward_without_scaling, "forgot the scaling"),
                     (forward_r_over_alpha, "r / alpha"),
                     (forward_update_transposed, "x @ A.T @ B.T"),
                     (forward_update_only, "add the frozen layer's output")],
    "merge_lora_weight": [(merge_without_scaling, "forgot the scaling"),
                          (merge_in_place, "changed W0 in place"),
                          (merge_transposed, "returned the transpose")],
    "lora_parameter_count": [(count_one_layer, "counted one transformer layer"),
                             (count_ignoring_gqa, "grouped-query attention"),
                             (count_full_matrices, "r * (d_in + d_out)")],
    "lora_target_names": [(targets_by_ending, "only end in the target's letters"),
                          (targets_by_last_part, "compared only the last part"),
                          (targets_after_a_dot, "'lm_head' has no dot before it"),
                          (targets_by_target, "in the order of `names`")],
    "rank_for_budget": [(rank_rounded, "round down"),
                        (rank_one_layer, "counted one transformer layer")],
    "nf4_block_indices": [(indices_by_max, "absolute maximum"),
                          (indices_evenly_spaced, "not evenly spaced"),
                          (indices_as_values, "returned the code values"),
                          (indices_unscaled, "did not scale the block")],
    "dequantize_nf4_block": [(dequantize_dividing, "divided by absmax"),
                             (dequantize_unscaled, "forgot to multiply"),
                             (dequantize_evenly_spaced, "evenly spaced")],
    "bits_per_weight": [(bits_without_code, "4 bits of the code"),
                        (bits_32bit_scales_always, "stores them in 8 bits"),
                        (bits_no_second_level, "second-level scales")],
    "prepend_soft_prompt": [(prompt_after_input, "virtual tokens come first"),
                            (mask_not_extended, "left the mask as it was"),
                            (mask_all_ones, "keep the input's zeros")],
    "soft_prompt_parameter_counts": [(counts_all_heads, "num_key_value_heads"),
                                     (counts_without_keys_and_values, "factor 2"),
                                     (counts_prompt_per_layer, "once per layer")],
    "prefix_to_key_values": [(prefix_keys_first, "all keys, then all values"),
                             (prefix_swapped, "swapped keys and values"),
                             (prefix_tokens_before_heads, "heads first")],
    "bootstrap_mean_ci": [(ci_full_tail_each_side, "(1 - confidence) / 2"),
                          (ci_of_scores, "percentiles of the scores themselves"),
                          (ci_without_replacement, "without replacement"),
                          (ci_other_draws, "draw the indices exactly as the task says")],
    "mcnemar_p_value": [(mcnemar_one_sided, "one-sided"),
                        (mcnemar_uncapped, "did not cap at 1"),
                        (mcnemar_exclusive_tail, "inclusive"),
                        (mcnemar_chi_squared, "chi-squared approximation")],
    "ngram_overlap": [(overlap_unnormalised, "did not normalise"),
                      (overlap_joined_training, "spanning two texts"),
                      (overlap_with_repeats, "distinct n-gram"),
                      (overlap_count, "divide it by")],
}
