"""RL with a reward: GRPO, group relative policy optimisation (Shao et al. 2024, arXiv:2402.03300),
PPO's clipped objective (Schulman et al. 2017) with group baselines instead of a value network.

For each prompt the policy samples a group of G answers, and a reward scores them: a verifiable
one (is the answer exactly right?) or a learned reward model (RLHF, Ouyang et al. 2022). An
answer's advantage is its reward relative to its group, A = (r - mean_group) / (std_group + eps).
Per answer token, with ratio = pi(token) / pi_old(token) (pi_old: the policy that sampled),
    loss = -min(ratio * A, clip(ratio, 1 - eps_clip, 1 + eps_clip) * A) + beta * ratio * KL(pi || ref),
with the k3 estimator KL = exp(ref - logp) - (ref - logp) - 1 (Schulman 2020, "Approximating KL
divergence"), weighted by the ratio so that it stays an unbiased estimate when the answers were
sampled by pi_old (as TRL does by default, `use_bias_correction_kl`), averaged over each answer's
tokens and then over answers (TRL's "grpo" loss aggregation). Several optimisation epochs per
batch of samples (`epochs_per_batch`, TRL's `num_iterations`) move pi away from pi_old, and the
clip then acts. Library twin: trl.GRPOTrainer; tests/test_rl.py compares the losses and the KL.
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
    epochs_per_batch: int = 1     # optimisation passes over each batch of samples (PPO-style)
    importance_weighted_kl: bool = True   # KL times the ratio: unbiased for samples from pi_old
    temperature: float = 1.0
    max_new_tokens: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1, got {getattr(self, name)}"
                    for name in ("steps", "prompts_per_step", "max_new_tokens", "epochs_per_batch")
                    if getattr(self, name) < 1]
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


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled by pi: exp(d) - d - 1 with
    d = log ref - log pi. Never negative, unbiased, and of lower variance than -d (Schulman's k3)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def grpo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
              clip_eps: float = 0.2, ref_logps: Tensor | None = None,
              kl_beta: float = 0.0, importance_weighted_kl: bool = True) -> tuple[Tensor, dict[str, float]]:
    """The clipped policy-gradient loss of GRPO.

    Args:
        logps, old_logps, ref_logps: per-token log-probs (N, T) under the policy being trained, the
            policy that sampled the answers, and the reference.
        advantages: one per answer, (N,). mask: 1 on answer tokens, (N, T).
        importance_weighted_kl: weight each token's KL by its ratio pi / pi_old (TRL's default).
    """
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = -torch.min(ratio * advantages[:, None], clipped * advantages[:, None])
    metrics = {"clipped": ((ratio - clipped).abs() > 0).float()[mask.bool()].mean().item()}
    if ref_logps is not None:
        kl = kl_k3(logps, ref_logps) * (ratio if importance_weighted_kl else 1.0)
        per_token = per_token + kl_beta * kl
        metrics["kl"] = ((kl * mask).sum() / mask.sum()).item()
    per_answer = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_answer.mean(), metrics


@torch.no_grad()
def sampled_kl(model: nn.Module, reference: nn.Module, tokenizer: Any, prompts: Sequence[str], *,
               max_new_tokens: int = 24, seed: int = 0) -> Tensor:
    """KL(model || reference) over whole answers, one estimate per prompt: log pi(y|x) - log ref(y|x)
    for an answer y the model samples (its mean over many prompts estimates the KL, unbiased)."""
    ids = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    answers = generate_ids(model, tokenizer, ids, max_new_tokens=max_new_tokens, do_sample=True, seed=seed)
    examples = [{"input_ids": p + a, "labels": [-100] * len(p) + a} for p, a in zip(ids, answers)]
    shifts = []
    for batch in batches(model, examples, 64, partial(pad_batch, pad_id=tokenizer.pad_token_id)):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        shifts.append((token_logprobs(model(**inputs).logits, batch["labels"])
                       - token_logprobs(reference(**inputs).logits, batch["labels"])).sum(-1).cpu())
    return torch.cat(shifts)


def exact_answer_reward(answers: list[str], rows: list[dict[str, str]], sequences: Any = None) -> Tensor:
    """1 for an answer that is exactly the row's response (normalised), else 0: verifiable."""
    return torch.tensor([float(normalize(a) == normalize(r["response"])) for a, r in zip(answers, rows)])


def train_grpo(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]], reward_fn: RewardFn,
               config: GRPO = GRPO(), *, reference: nn.Module | None = None,
               eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, eval_every: int = 0,
               progress: bool = True) -> list[dict[str, float]]:
    """Improve `model` on the prompts of `rows` by GRPO; return the per-step history.

    Without a `reference`, the KL term compares with the model's LoRA adapters off, or with a
    frozen copy of the model as it starts; the KL is measured (and logged) even when kl_beta is 0.
    `eval_fn(model)`, every `eval_every` steps and before the first, adds held-out measures to the
    history (the true task, which a reward model only approximates).
    """
    from tqdm.auto import tqdm

    if reference is None and not lora_layers(model):
        reference = copy.deepcopy(model).eval().requires_grad_(False)   # the policy as it starts
    rng = random.Random(config.seed)
    optimizer = make_optimizer(model, TrainConfig(max_steps=config.steps * config.epochs_per_batch,
                                                  lr=config.lr))
    history = [{"step": 0, **eval_fn(model)}] if eval_fn and eval_every else []
    for step in tqdm(range(config.steps), desc="grpo", disable=not progress, mininterval=1.0):
        batch, rewards = rollout(model, tokenizer, rng.sample(list(rows), config.prompts_per_step),
                                 reward_fn, config, seed=config.seed * 100_003 + step)
        advantages = group_advantages(rewards.view(config.prompts_per_step, config.group_size)).view(-1)
        mask = (batch["labels"][:, 1:] != -100).float()
        ref_logps = _reference_logps(model, reference, batch)
        model.train()
        old_logps, epochs = None, []
        for _ in range(config.epochs_per_batch):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps = token_logprobs(logits, batch["labels"])
            # The first pass runs the policy that sampled: ratio = 1 in value (its gradient is the
            # policy gradient). Later passes see the updated policy against that one, and the clip acts.
            old_logps = logps.detach() if old_logps is None else old_logps
            loss, metrics = grpo_loss(logps, old_logps, advantages, mask, config.clip_eps, ref_logps,
                                      config.kl_beta, config.importance_weighted_kl)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            epochs.append({"loss": loss.item(), **metrics})
        model.eval()
        row = {"step": step + 1, "reward": rewards.mean().item(), "answer_tokens": mask.sum(1).mean().item(),
               "kl": epochs[0]["kl"], "loss": epochs[-1]["loss"],
               "clipped": sum(e["clipped"] for e in epochs[1:]) / max(1, len(epochs) - 1)}
        if eval_fn and eval_every and (step + 1) % eval_every == 0:
            row |= eval_fn(model)
        history.append(row)
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
