"""Reward models: a language model with a scalar head, trained on preference pairs.

Bradley-Terry: P(chosen preferred to rejected) = sigmoid(r(x, y_c) - r(x, y_r)), so the loss is
-log sigmoid(r_c - r_r - margin) (InstructGPT, Ouyang et al. 2022; the margin as in Llama 2). The
reward of a whole answer is read from the last token of prompt + answer, its EOS.
Library twin: trl.RewardTrainer on transformers' LlamaForSequenceClassification, whose weight
names `RewardModel` shares; tests/test_reward.py compares losses on the same batch.
"""

from __future__ import annotations

import copy
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
    max_positions,
    pad_batch,
    pad_pairs,
    require_within_positions,
)
from ftcourse.chat import messages
from ftcourse.dpo import tokenize_pairs
from ftcourse.evaluate import mentions_answer
from ftcourse.generate import generate
from ftcourse.memory import plan_run
from ftcourse.run_store import trained_or_loaded
from ftcourse.train import TrainConfig, TrainResult, train


class RewardModel(nn.Module):
    """The transformer body of a causal LM (`model`) and a linear `score` head, hidden -> 1."""

    def __init__(self, backbone: nn.Module, config: Any):
        super().__init__()
        self.config = config
        self.model = backbone
        self.score = nn.Linear(config.hidden_size, 1, bias=False)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, seed: int = 0) -> RewardModel:
        """A reward model that starts from a copy of `lm`'s body and a small random head."""
        reward_model = cls(copy.deepcopy(lm.model), lm.config)    # the LM head is dropped, not reused
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():   # small, so early rewards are near 0 and the loss starts near log 2
            reward_model.score.weight.normal_(0.0, lm.config.initializer_range, generator=generator)
        return reward_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Rewards (B,) for right-padded rows (B, T): the head applied at each row's last token."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        # Causal attention: only the last token has read the whole answer (its EOS), so the reward
        # is read there; right padding puts it at index (real tokens - 1).
        last = attention_mask.sum(-1) - 1
        return self.score(hidden[torch.arange(len(hidden)), last]).squeeze(-1)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | float = 0.0) -> Tensor:
    """Per-pair loss -log sigmoid(r_c - r_r - margin), shape (B,)."""
    # sigmoid(r_c - r_r) is the modelled P(chosen preferred); its negative log is the loss. Only
    # the difference counts: adding a constant to every reward changes nothing.
    return -F.logsigmoid(chosen - rejected - margin)


def reward_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The training loop's loss for pair batches, with pairwise accuracy and margin logged."""
    chosen, rejected = model(batch["input_ids"], batch["attention_mask"]).chunk(2)   # rows: chosen first
    losses = bradley_terry_loss(chosen, rejected)
    margins = (chosen - rejected).detach()              # > 0 where the pair is ranked as labelled
    return losses.sum(), torch.tensor(float(len(losses))), {
        "accuracy": (margins > 0).float().sum(), "margin": margins.sum()}


def train_reward_model(lm: nn.Module, tokenizer: Any, pairs: Any, config: TrainConfig, *,
                       progress: bool = True,
                       reuse: str | Path | None = None) -> tuple[RewardModel, TrainResult]:
    """A reward model initialised from `lm` and trained on preference pairs; with `reuse` (a folder
    of finished runs, `Chapter.runs`), loaded from there when the same run is stored."""
    model = RewardModel.from_causal_lm(lm, seed=config.seed)
    examples = tokenize_pairs(tokenizer, pairs, max_positions(lm))
    # Counted as full fine-tuning of `lm`: an upper bound, since a score head has no vocabulary logits.
    plan_run(lm, examples, config, rows_per_example=2)
    run = partial(train, model, examples, config, loss_fn=reward_loss,
                  collate=partial(pad_pairs, pad_id=tokenizer.pad_token_id), progress=progress,
                  description="reward model")
    return model, run() if reuse is None else trained_or_loaded(reuse, model, examples, config, run,
                                                                 loss="Bradley-Terry, on a reward model")


def reward_margins(model: RewardModel, tokenizer: Any, pairs: Any, batch_size: int = 32) -> np.ndarray:
    """r(chosen) - r(rejected) for each pair: positive where the model agrees with the label."""
    tokenized = tokenize_pairs(tokenizer, pairs)
    require_within_positions(model, tokenized)
    margins: list[float] = []
    with evaluating(model):
        for batch in batches(model, tokenized, batch_size, partial(pad_pairs, pad_id=tokenizer.pad_token_id)):
            chosen, rejected = model(batch["input_ids"], batch["attention_mask"]).chunk(2)
            margins += (chosen - rejected).tolist()
    return np.array(margins)


def score_sequences(model: RewardModel, sequences: list[list[int]], pad_id: int,
                    batch_size: int = 64) -> Tensor:
    """The reward of each token sequence (prompt + answer), read at its last token; on the CPU,
    whatever the model's device, like every score ftcourse returns."""
    examples = [{"input_ids": sequence} for sequence in sequences]
    collate = partial(pad_batch, pad_id=pad_id)
    with evaluating(model):
        return torch.cat([model(batch["input_ids"], batch["attention_mask"]).cpu()
                          for batch in batches(model, examples, batch_size, collate)])


def score_answers(model: RewardModel, tokenizer: Any, prompts: list[str], answers: list[str]) -> Tensor:
    """The reward of each answer to its prompt, rendered as a chat (empty answers allowed)."""
    chats = [tokenizer.apply_chat_template(messages(prompt, answer), return_dict=False)
             for prompt, answer in zip(prompts, answers)]
    return score_sequences(model, chats, tokenizer.pad_token_id)


def reward_and_truth(model: nn.Module, tokenizer: Any, reward_model: RewardModel,
                     rows: list[dict[str, str]], max_new_tokens: int = 24) -> dict[str, np.ndarray]:
    """Per row, for the model's greedy answer: whether it states the right fact (the true task) and
    the reward model's score of it (the proxy RL optimises), to watch the two side by side."""
    prompts = [row["instruction"] for row in rows]
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    return {"states the right fact": mentions_answer(answers, [row["response"] for row in rows]),
            "reward-model score": score_answers(reward_model, tokenizer, prompts, answers).numpy()}


def as_reward_fn(model: RewardModel, tokenizer: Any) -> Any:
    """The reward model as RL's reward function (`rl.RewardFn`): each sampled answer scored with
    its row's prompt, as `score_answers` scores it."""
    def reward(answers: list[str], rows: list[dict[str, str]], sequences: Any = None) -> Tensor:
        return score_answers(model, tokenizer, [row["instruction"] for row in rows], answers)
    return reward


def from_sequence_classifier(classifier: Any) -> RewardModel:
    """A transformers LlamaForSequenceClassification (num_labels=1) as a `RewardModel`, sharing weights."""
    reward_model = RewardModel(classifier.model, classifier.config)
    reward_model.score = classifier.score
    return reward_model


def to_sequence_classifier(model: RewardModel) -> Any:
    """The same weights in transformers' LlamaForSequenceClassification (num_labels=1)."""
    from transformers import LlamaForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels = 1
    classifier = LlamaForSequenceClassification(config)
    classifier.load_state_dict(model.state_dict(), strict=True)
    return classifier.eval()
