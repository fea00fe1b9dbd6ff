import copy
import math

import pytest
import torch

from ftcourse.rl import GRPO, exact_answer_reward, group_advantages, grpo_loss, train_grpo
from ftcourse.tolerance import assert_close


def test_group_advantages_on_known_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    advantages = group_advantages(rewards, eps=1e-4)
    std = math.sqrt(1 / 3)                       # unbiased std of [1, 0, 0, 1]
    expected_first = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4)]
    # A mean and a standard deviation over a group of 4, a subtraction and a division.
    assert_close(advantages[0], torch.tensor(expected_first), n=4 + 4 + 2)
    assert torch.equal(advantages[1], torch.zeros(4))          # all equal: nothing to learn
    assert_close(advantages[2], (rewards[2] - 0.75) / (1.5 + 1e-4), n=4 + 4 + 2)


def test_grpo_loss_on_known_values():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([1.0, -2.0])
    old = torch.zeros(2, 3)
    same, _ = grpo_loss(old.clone(), old, advantages, mask)
    assert_close(same, -advantages.mean(), n=6)                      # ratio 1: loss = -mean(A)
    grown = torch.full((2, 3), math.log(1.5))                        # ratio 1.5 everywhere
    clipped, metrics = grpo_loss(grown, old, advantages, mask, clip_eps=0.2)
    # A > 0: min(1.5 A, 1.2 A) = 1.2 A; A < 0: min(-3, -2.4) = -3 -> per answer -1.2 and +3.
    assert_close(clipped, torch.tensor((-1.2 + 3.0) / 2), n=6, scale=3.0)
    assert metrics["clipped"] == 1.0


def test_kl_term_is_zero_at_the_reference_and_positive_elsewhere():
    mask = torch.ones(1, 4)
    logps = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.1]]))
    _, at_reference = grpo_loss(logps, logps, torch.zeros(1), mask, ref_logps=logps, kl_beta=0.1)
    _, away = grpo_loss(logps, logps, torch.zeros(1), mask, ref_logps=logps - 0.3, kl_beta=0.1)
    assert at_reference["kl"] == 0.0 and away["kl"] > 0.0


def test_exact_answer_reward():
    rewards = exact_answer_reward(["Pelmora.", "cat", ""], [{"response": "pelmora"}, {"response": "dog"},
                                                           {"response": "x"}])
    assert rewards.tolist() == [1.0, 0.0, 0.0]


def test_grpo_raises_the_reward_of_a_policy(base):
    model, tokenizer = base
    rows = [{"instruction": "Where does Quadra Mitamk live?", "response": "Pelmora"}] * 4
    shorter_is_better = lambda answers, rows, sequences: torch.tensor([-len(a) / 10 for a in answers])
    history = train_grpo(copy.deepcopy(model), tokenizer, rows, shorter_is_better,
                         GRPO(steps=15, prompts_per_step=2, group_size=8, lr=3e-3, max_new_tokens=8),
                         progress=False)
    first, last = sum(h["reward"] for h in history[:4]) / 4, sum(h["reward"] for h in history[-4:]) / 4
    assert last > first + 0.5, (first, last)


def test_bad_grpo_configs_are_clear_errors():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        GRPO(group_size=1)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        GRPO(steps=0)
