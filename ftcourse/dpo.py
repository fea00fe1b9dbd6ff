"""DPO: learning from preferences with no reward model (Rafailov et al. 2023, arXiv:2305.18290, eq. 7).

loss = -log sigmoid(beta * [(log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))])
The policy pi is trained to raise the chosen answer's likelihood relative to a frozen reference
and to lower the rejected one's; beta * (log pi - log ref) is the "implicit reward", logged with
its accuracy and margin. With a LoRA policy the reference is the same model with its adapters
switched off: no second copy of the weights.
Library twin: trl.DPOTrainer; tests/test_dpo.py compares the loss, rewards and log-probs.
Shapes: B pairs; a batch holds 2B rows, the chosen answers first (`ftcourse.batching.pad_pairs`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ftcourse.batching import (
    batches,
    evaluating,
    leave_out_too_long,
    max_positions,
    pad_pairs,
    require_within_positions,
    token_logprobs,
)
from ftcourse.chat import tokenize_pair
from ftcourse.data.checks import require_fields
from ftcourse.lora import adapters_disabled, lora_layers
from ftcourse.memory import plan_run
from ftcourse.run_store import trained_or_loaded
from ftcourse.train import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class DPO:
    """How strongly the policy may move away from the reference: small beta, far."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"DPO.beta must be > 0, got {self.beta!r}; 0.1 is the usual start.")


def sequence_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """log p(answer | prompt) per row: the log-probs of the labelled tokens, summed. (2B,)"""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # log p(y | x) = sum_t log p(y_t | x, y_<t): the prompt's labels are -100, so only y counts.
    return token_logprobs(logits, batch["labels"]).sum(-1)


def dpo_loss(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair DPO losses and the implicit rewards beta * (log pi - log ref) of both answers.

    Args:
        pi_chosen: summed log-probs of the chosen answers under the policy, shape (B,).
    """
    # The implicit reward r(x, y) = beta log(pi(y|x) / ref(y|x)) (the paper's eq. 5, up to a
    # term in x alone, which cancels in the difference below).
    chosen_rewards = beta * (pi_chosen - ref_chosen)
    rejected_rewards = beta * (pi_rejected - ref_rejected)
    # Bradley-Terry on the implicit rewards: -log sigmoid(r_c - r_r), eq. 7.
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def dpo_loss_fn(reference: nn.Module | None, beta: float):
    """A loss for the training loop; reference None means "the policy with its adapters off"."""
    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        pi_chosen, pi_rejected = sequence_logprobs(model, batch).chunk(2)   # rows: chosen, then rejected
        with torch.no_grad():                       # the reference is fixed: no gradient flows into it
            if reference is None:
                with adapters_disabled(model):
                    ref_chosen, ref_rejected = sequence_logprobs(model, batch).chunk(2)
            else:
                ref_chosen, ref_rejected = sequence_logprobs(reference, batch).chunk(2)
        losses, chosen_rewards, rejected_rewards = dpo_loss(pi_chosen, pi_rejected, ref_chosen,
                                                            ref_rejected, beta)
        margins = (chosen_rewards - rejected_rewards).detach()   # > 0: the pair is ranked right
        metrics = {"reward_accuracy": (margins > 0).float().sum(), "reward_margin": margins.sum(),
                   "chosen_reward": chosen_rewards.detach().sum()}
        return losses.sum(), torch.tensor(float(len(losses))), metrics   # the loop averages over pairs
    return loss_fn


def tokenize_pairs(tokenizer: Any, pairs: Any, max_len: int | None = None) -> list[dict[str, list[int]]]:
    """Rows with prompt / chosen / rejected, checked and tokenized as two chats each; pairs with a
    side longer than `max_len` tokens are left out with a warning that counts them."""
    require_fields(pairs, ("prompt", "chosen", "rejected"), name="preference data")
    return leave_out_too_long([tokenize_pair(tokenizer, p["prompt"], p["chosen"], p["rejected"])
                               for p in pairs], max_len)


def train_dpo(policy: nn.Module, tokenizer: Any, pairs: Any, config: TrainConfig, dpo: DPO = DPO(), *,
              reference: nn.Module | None = None, progress: bool = True,
              reuse: str | Path | None = None) -> TrainResult:
    """Train `policy` with DPO on preference pairs. Without a `reference`, a LoRA policy uses
    itself with adapters off, any other policy a frozen copy of itself taken now.

    With `reuse` (a folder of finished runs, `Chapter.runs`), the same run stored there is loaded
    instead of trained, and a new one is stored (`ftcourse.run_store`); not with a `reference`.
    """
    if reuse is not None and reference is not None:
        raise ValueError("train_dpo(reuse=...) cannot reuse a run with a reference of your own (its "
                         "weights are not part of the stored run's key); pass one or the other.")
    if reference is None and not lora_layers(policy):
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    examples = tokenize_pairs(tokenizer, pairs, max_positions(policy))
    plan_run(policy, examples, config, rows_per_example=2)     # a chosen and a rejected row each
    run = partial(train, policy, examples, config, loss_fn=dpo_loss_fn(reference, dpo.beta),
                  collate=partial(pad_pairs, pad_id=tokenizer.pad_token_id), progress=progress,
                  description="dpo")
    return run() if reuse is None else trained_or_loaded(reuse, policy, examples, config, run, loss=repr(dpo))


def pair_logprobs(model: nn.Module, tokenizer: Any, pairs: Any, batch_size: int = 32) -> np.ndarray:
    """log p(answer | prompt) of each pair's chosen and rejected answer under `model`: (pairs, 2)."""
    tokenized = tokenize_pairs(tokenizer, pairs)
    require_within_positions(model, tokenized)
    rows = []
    with evaluating(model):
        for batch in batches(model, tokenized, batch_size, partial(pad_pairs, pad_id=tokenizer.pad_token_id)):
            chosen, rejected = sequence_logprobs(model, batch).chunk(2)
            rows.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    return torch.cat(rows).numpy()


def preference_accuracy(model: nn.Module, tokenizer: Any, pairs: Any, batch_size: int = 32) -> np.ndarray:
    """1.0 for each pair whose chosen answer the model finds more likely than the rejected one."""
    logprobs = pair_logprobs(model, tokenizer, pairs, batch_size)
    return (logprobs[:, 0] > logprobs[:, 1]).astype(float)


def pair_logprob_shifts(model: nn.Module, reference: nn.Module, tokenizer: Any,
                        pairs: Any) -> tuple[np.ndarray, np.ndarray]:
    """log pi - log ref of each pair's chosen answer and of its rejected one: how far training moved
    each; beta times their difference is DPO's implicit reward margin."""
    shifts = pair_logprobs(model, tokenizer, pairs) - pair_logprobs(reference, tokenizer, pairs)
    return shifts[:, 0], shifts[:, 1]
