"""Wrong answers planted in the exercises of chapters 00-04, each a mistake learners make.

`PLANTED[name]` lists (wrong answer, a fragment of the message the check must give for it):
tests/test_exercises.py asserts that every check rejects each of them with that message, so
every check is shown to fail, and to say why.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------- 00 quickstart


def exact_match_case_sensitive(prediction: str, reference: str) -> bool:
    return " ".join(prediction.split()).strip(".!?") == " ".join(reference.split()).strip(".!?")


def exact_match_no_punctuation(prediction: str, reference: str) -> bool:
    return " ".join(prediction.lower().split()) == " ".join(reference.lower().split())


def exact_match_contains(prediction: str, reference: str) -> bool:
    normalise = lambda text: " ".join(text.lower().split()).strip(" .!?,;:'\"")
    return normalise(reference) in normalise(prediction)


def counts_ignore_requires_grad(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return total, total


def counts_tensors(model: nn.Module) -> tuple[int, int]:
    parameters = list(model.parameters())
    return sum(p.requires_grad for p in parameters), len(parameters)


def counts_from_state_dict(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(t.numel() for t in model.state_dict().values())


# ---------------------------------------------------------------- 01 transformer internals


def rms_norm_with_variance(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return x / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight


def rms_norm_without_weight(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm_eps_outside(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * weight


def attention_unscaled(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    return scores.softmax(-1) @ v


def attention_unmasked(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v


def attention_masks_diagonal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(torch.ones(T, T).triu().bool(), float("-inf")).softmax(-1) @ v


def layer_parameters_without_gqa(config: dict) -> int:
    D, F = config["hidden_size"], config["intermediate_size"]
    return 4 * D * D + 3 * D * F + 2 * D


def layer_parameters_without_norms(config: dict) -> int:
    D, F = config["hidden_size"], config["intermediate_size"]
    H, K = config["num_attention_heads"], config["num_key_value_heads"]
    return 2 * D * D + 2 * D * K * (D // H) + 3 * D * F


# ---------------------------------------------------------------- 02 SFT


def labels_masked_with_zero(input_ids: list[int], prompt_length: int) -> list[int]:
    return [0] * prompt_length + input_ids[prompt_length:]


def labels_off_by_one(input_ids: list[int], prompt_length: int) -> list[int]:
    return [-100] * (prompt_length + 1) + input_ids[prompt_length + 1:]


def labels_in_place(input_ids: list[int], prompt_length: int) -> list[int]:
    input_ids[:prompt_length] = [-100] * prompt_length
    return input_ids


def loss_unshifted(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)


def loss_mean_of_rows(logits: Tensor, labels: Tensor) -> Tensor:
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                reduction="none")
    return (per_token.sum(1) / (labels[:, 1:] != -100).sum(1)).mean()


def mask_causal_only(position_ids: list[int]) -> Tensor:
    return torch.ones(len(position_ids), len(position_ids), dtype=torch.bool).tril()


def mask_block_only(position_ids: list[int]) -> Tensor:
    example = torch.cumsum(torch.tensor(position_ids) == 0, 0)
    return example[:, None] == example[None, :]


# ---------------------------------------------------------------- 03 preferences


def reward_loss_wrong_sign(chosen: Tensor, rejected: Tensor) -> Tensor:
    return -F.logsigmoid(rejected - chosen).mean()


def reward_loss_unstable(chosen: Tensor, rejected: Tensor) -> Tensor:
    return -torch.log(torch.sigmoid(chosen - rejected)).mean()


def dpo_without_reference(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor,
                          ref_rejected: Tensor, beta: float = 0.1) -> Tensor:
    return -F.logsigmoid(beta * (pi_chosen - pi_rejected)).mean()


def dpo_beta_outside(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor,
                     ref_rejected: Tensor, beta: float = 0.1) -> Tensor:
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    return -beta * F.logsigmoid(margin).mean()


def advantages_over_batch(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    return (rewards - rewards.mean()) / (rewards.std() + eps)


def advantages_without_eps(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    return (rewards - rewards.mean(1, keepdim=True)) / rewards.std(1, keepdim=True)


def kl_reversed(logps: Tensor, ref_logps: Tensor) -> Tensor:
    d = logps - ref_logps
    return torch.exp(d) - d - 1


def kl_plain_log_ratio(logps: Tensor, ref_logps: Tensor) -> Tensor:
    return logps - ref_logps


def kl_without_minus_one(logps: Tensor, ref_logps: Tensor) -> Tensor:
    d = ref_logps - logps
    return torch.exp(d) - d


# ---------------------------------------------------------------- 04 full vs PEFT


def bytes_without_master_copy(precision: str, optimizer: str) -> float:
    weight = 4 if precision == "fp32" else 2
    states = {"adamw": 2, "sgd-momentum": 1, "sgd": 0}[optimizer]
    return 2 * weight + states * (2 if precision == "bf16" else 4)


def bytes_with_master_copy_always(precision: str, optimizer: str) -> float:
    weight = 4 if precision == "fp32" else 2
    states = {"adamw": 2, "sgd-momentum": 1, "sgd": 0}[optimizer]
    return 2 * weight + 4 + states * (2 if precision == "bf16" else 4)


def zero_not_cumulative(num_parameters: float, zero_stage: int, num_devices: int) -> float:
    weights, gradients, optimizer = 2 * num_parameters, 2 * num_parameters, 12 * num_parameters
    if zero_stage == 1:
        optimizer /= num_devices
    elif zero_stage == 2:
        gradients /= num_devices
    elif zero_stage == 3:
        weights /= num_devices
    return weights + gradients + optimizer


def zero_shards_everything(num_parameters: float, zero_stage: int, num_devices: int) -> float:
    return 16 * num_parameters / (num_devices if zero_stage else 1)


PLANTED: dict[str, list[tuple[Callable, str]]] = {
    "is_exact_match": [(exact_match_case_sensitive, "lower-case"),
                       (exact_match_no_punctuation, "punctuation"),
                       (exact_match_contains, "merely contains")],
    "parameter_counts": [(counts_ignore_requires_grad, "requires_grad"),
                         (counts_tensors, "numel"),
                         (counts_from_state_dict, "state_dict")],
    "rms_norm": [(rms_norm_with_variance, "mean square"),
                 (rms_norm_without_weight, "multiply by weight"),
                 (rms_norm_eps_outside, "inside the square root")],
    "causal_attention": [(attention_unscaled, "sqrt(hd)"),
                         (attention_unmasked, "causal mask"),
                         (attention_masks_diagonal, "NaN")],
    "llama_layer_parameters": [(layer_parameters_without_gqa, "num_key_value_heads"),
                               (layer_parameters_without_norms, "RMSNorm")],
    "mask_prompt_labels": [(labels_masked_with_zero, "-100"),
                           (labels_off_by_one, "first response token"),
                           (labels_in_place, "in place")],
    "next_token_loss": [(loss_unshifted, "shift"),
                        (loss_mean_of_rows, "every token counts the same")],
    "block_causal_mask": [(mask_causal_only, "see each other"),
                          (mask_block_only, "later tokens")],
    "reward_model_loss": [(reward_loss_wrong_sign, "wrong sign"),
                          (reward_loss_unstable, "logsigmoid")],
    "dpo_batch_loss": [(dpo_without_reference, "reference"),
                       (dpo_beta_outside, "inside the sigmoid")],
    "kl_per_token": [(kl_reversed, "d = log pi - log ref"),
                     (kl_plain_log_ratio, "'k1'"),
                     (kl_without_minus_one, "left out the - 1")],
    "grpo_advantages": [(advantages_over_batch, "each prompt's group"),
                        (advantages_without_eps, "eps")],
    "training_bytes_per_parameter": [(bytes_without_master_copy, "master copy of each weight"),
                                     (bytes_with_master_copy_always, "only mixed precision")],
    "zero_model_state_bytes": [(zero_not_cumulative, "cumulative"),
                               (zero_shards_everything, "each stage adds one kind")],
}
