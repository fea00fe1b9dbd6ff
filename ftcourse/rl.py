"""RL with a reward: GRPO, group relative policy optimisation (Shao et al. 2024, arXiv:2402.03300).

For each prompt the policy samples a group of G answers, and a reward scores them: a verifiable
one (is the answer exactly right?) or a reward model. An answer's advantage is its reward
relative to its group, A = (r - mean_group) / (std_group + eps): no value network is needed.
Per answer token, with ratio = pi(token) / pi_old(token) (pi_old: the policy that sampled),
    loss = -min(ratio * A, clip(ratio, 1 - eps_clip, 1 + eps_clip) * A) + beta * KL(pi || ref),
with the k3 estimator KL = exp(ref - logp) - (ref - logp) - 1, averaged over each answer's
tokens and then over answers (the "grpo" loss aggregation TRL's GRPOTrainer documents). No test
compares this loop with GRPOTrainer yet, so TRL is the reference for the formula, not a proven twin.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ftcourse.batching import batches, pad_batch, token_logprobs
from ftcourse.chat import prompt_ids
from ftcourse.evaluate import normalize
from ftcourse.generate import generate_ids
from ftcourse.lora import adapters_disabled, lora_layers
from ftcourse.train import TrainConfig, make_optimizer

# reward_fn(answers, rows, sequences) -> rewards (N,): the decoded answers, the dataset rows they
# answer (with "response"), and the token ids of prompt + answer (for reward models).
RewardFn = Callable[[list[str], list[dict[str, str]], list[list[int]]], Tensor]


@dataclass(frozen=True)
class GRPO:
    """The RL run: groups of sampled answers per prompt, and how far each update may go."""

    steps: int = 30
    prompts_per_step: int = 8
    group_size: int = 8
    lr: float = 1e-4
    clip_eps: float = 0.2
    kl_beta: float = 0.0          # > 0 keeps the policy near the reference
    temperature: float = 1.0
    max_new_tokens: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1, got {getattr(self, name)}"
                    for name in ("steps", "prompts_per_step", "max_new_tokens") if getattr(self, name) < 1]
        if self.group_size < 2:
            problems.append(f"group_size must be >= 2 (advantages compare answers), got {self.group_size}")
        if not self.lr > 0 or not self.temperature > 0 or self.kl_beta < 0 or not 0 < self.clip_eps < 1:
            problems.append("lr and temperature must be > 0, kl_beta >= 0 and clip_eps in (0, 1)")
        if problems:
            raise ValueError("Invalid GRPO config: " + "; ".join(problems) + ".")


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """(r - mean) / (std + eps) within each group (row) of rewards (P, G); std as torch.std
    (unbiased), as TRL computes it. A group whose answers all score the same teaches nothing."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + eps)


def grpo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
              clip_eps: float = 0.2, ref_logps: Tensor | None = None,
              kl_beta: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """The clipped policy-gradient loss of GRPO.

    Args:
        logps, old_logps, ref_logps: per-token log-probs (N, T) under the policy being trained, the
            policy that sampled the answers, and the reference.
        advantages: one per answer, (N,). mask: 1 on answer tokens, (N, T).
    """
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = -torch.min(ratio * advantages[:, None], clipped * advantages[:, None])
    metrics = {"clipped": ((ratio - clipped).abs() > 0).float()[mask.bool()].mean().item()}
    if ref_logps is not None:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + kl_beta * kl
        metrics["kl"] = ((kl * mask).sum() / mask.sum()).item()
    per_answer = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_answer.mean(), metrics


def exact_answer_reward(answers: list[str], rows: list[dict[str, str]], sequences: Any = None) -> Tensor:
    """1 for an answer that is exactly the row's response (normalised), else 0: verifiable."""
    return torch.tensor([float(normalize(a) == normalize(r["response"])) for a, r in zip(answers, rows)])


def train_grpo(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]], reward_fn: RewardFn,
               config: GRPO = GRPO(), *, reference: nn.Module | None = None,
               progress: bool = True) -> list[dict[str, float]]:
    """Improve `model` on the prompts of `rows` by GRPO; return the per-step history.

    Without a `reference`, the KL term (if kl_beta > 0) compares with the model's LoRA adapters
    off, or with a frozen copy of the model as it starts.
    """
    from tqdm.auto import tqdm

    if config.kl_beta > 0 and reference is None and not lora_layers(model):
        reference = copy.deepcopy(model).eval().requires_grad_(False)   # the policy as it starts
    rng = random.Random(config.seed)
    optimizer = make_optimizer(model, TrainConfig(max_steps=config.steps, lr=config.lr))
    history = []
    for step in tqdm(range(config.steps), desc="grpo", disable=not progress, mininterval=1.0):
        batch, rewards = rollout(model, tokenizer, rng.sample(list(rows), config.prompts_per_step),
                                 reward_fn, config, seed=config.seed * 100_003 + step)
        advantages = group_advantages(rewards.view(config.prompts_per_step, config.group_size)).view(-1)
        mask = (batch["labels"][:, 1:] != -100).float()
        model.train()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps = token_logprobs(logits, batch["labels"])
        ref_logps = _reference_logps(model, reference, batch) if config.kl_beta > 0 else None
        # One update per batch of samples: the sampling policy is the current one, so ratio = 1 in
        # value (its gradient is the policy gradient) and clipping only acts on later updates.
        loss, metrics = grpo_loss(logps, logps.detach(), advantages, mask, config.clip_eps, ref_logps,
                                  config.kl_beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "reward": rewards.mean().item(), "loss": loss.item(),
                        "answer_tokens": mask.sum(1).mean().item(), **metrics})
    model.eval()
    return history


def rollout(model: nn.Module, tokenizer: Any, rows: list[dict[str, str]], reward_fn: RewardFn,
            config: GRPO, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """Sample `group_size` answers per row and score them: (batch with answer labels, rewards)."""
    prompts = [prompt_ids(tokenizer, row["instruction"]) for row in rows for _ in range(config.group_size)]
    answers = generate_ids(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                           do_sample=True, temperature=config.temperature, seed=seed)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]
    repeated = [row for row in rows for _ in range(config.group_size)]
    rewards = reward_fn(texts, repeated, [p + a for p, a in zip(prompts, answers)]).float()
    examples = [{"input_ids": p + a, "labels": [-100] * len(p) + a} for p, a in zip(prompts, answers)]
    batch = next(batches(model, examples, len(examples), partial(pad_batch, pad_id=tokenizer.pad_token_id)))
    return batch, rewards.to(batch["input_ids"].device)


@torch.no_grad()
def _reference_logps(model: nn.Module, reference: nn.Module | None, batch: dict[str, Tensor]) -> Tensor:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if reference is None:
        with adapters_disabled(model):
            return token_logprobs(model(**inputs).logits, batch["labels"])
    return token_logprobs(reference(**inputs).logits, batch["labels"])
