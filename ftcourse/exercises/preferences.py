"""Exercises for learning from preferences. Chapter 3: the reward model's loss, DPO's loss,
predicting DPO's first loss, an open experiment on how many pairs a reward model needs. Chapter 3b:
GRPO's advantages, the KL estimate per token, predicting how many groups of an easy prompt teach
nothing, an open experiment on GRPO's group size.

The oracles are the package's own: `ftcourse.reward.bradley_terry_loss`, `ftcourse.dpo.dpo_loss`
(tested equal to TRL's DPOTrainer), `ftcourse.rl.group_advantages` and `ftcourse.rl.kl_k3` (as
TRL's GRPOTrainer).
Shapes: B pairs; P prompts with G sampled answers each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ftcourse.dpo import dpo_loss
from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.reward import bradley_terry_loss
from ftcourse.rl import group_advantages, kl_k3


def reward_model_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Bradley-Terry loss of a reward model, averaged over pairs: -log sigmoid(r_chosen - r_rejected).

    It is small when each chosen answer's reward is well above the rejected one's. F.logsigmoid
    stays finite where log(sigmoid(x)) underflows to log(0) for a badly ranked pair.
    """
    return -F.logsigmoid(chosen - rejected).mean()


@exercise(chapter="03_rlhf_preferences", solution=reward_model_loss,
          task="Given the rewards (B,) of the chosen and of the rejected answers, return the mean "
               "Bradley-Terry loss -log sigmoid(r_chosen - r_rejected).")
def check_reward_model_loss(answer: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Compare with `bradley_terry_loss` on random pairs, then on one ranked very wrongly."""
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = (torch.randn(6, generator=generator, dtype=torch.float64) * 2 for _ in range(2))
    margin = chosen - rejected
    hints = {
        "wrong sign inside: the loss must be small when the chosen reward is the higher one, "
        "so use r_chosen - r_rejected.": -F.logsigmoid(-margin).mean(),
        "you forgot the minus: log sigmoid is negative, the loss is its negative.":
            F.logsigmoid(margin).mean(),
        "you summed over pairs: take the mean.": -F.logsigmoid(margin).sum(),
        "you left out the log: the loss is -log sigmoid(margin), a log-likelihood.":
            -torch.sigmoid(margin).mean()}
    got = answer(chosen.clone(), rejected.clone())
    expect_close(got, bradley_terry_loss(chosen, rejected).mean(), "reward_model_loss on 6 random pairs",
                 atol=1e-10, hints=hints)
    # A pair ranked very wrongly, in float32: log(sigmoid(-200)) is log(0) there.
    chosen, rejected = torch.tensor([-100.0, 1.0]), torch.tensor([100.0, 0.5])
    got = answer(chosen.clone(), rejected.clone())
    if isinstance(got, Tensor) and not torch.isfinite(got).all():
        raise ExerciseFailed("reward_model_loss for a pair ranked very wrongly (margin -200, float32): "
                             f"got {got.item()}. torch.log(torch.sigmoid(x)) underflows to log(0) = -inf; "
                             "use F.logsigmoid(x), which computes the same value stably.")
    expect_close(got, bradley_terry_loss(chosen, rejected).mean(), "reward_model_loss with margin -200",
                 atol=1e-4)


def dpo_batch_loss(pi_chosen: Tensor, pi_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                   beta: float = 0.1) -> Tensor:
    """DPO loss averaged over pairs, from each answer's summed log-prob under policy and reference.

    beta * (log pi - log ref) is an answer's implicit reward; the loss is Bradley-Terry on the
    chosen minus the rejected reward, so no reward model is needed.
    """
    chosen_reward = beta * (pi_chosen - ref_chosen)
    rejected_reward = beta * (pi_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward).mean()


@exercise(chapter="03_rlhf_preferences", solution=dpo_batch_loss,
          task="Given summed log-probs (B,) of the chosen and rejected answers under the policy and "
               "the reference, return the mean DPO loss -log sigmoid(beta * (chosen log-ratio - "
               "rejected log-ratio)), where log-ratio = log pi - log ref.")
def check_dpo_batch_loss(answer: Callable[..., Tensor]) -> None:
    """Compare with `dpo_loss` on realistic summed log-probs, at two values of beta."""
    generator = torch.Generator().manual_seed(0)
    for beta in (0.1, 0.5):
        # Summed log-probs of whole answers: negative, a few to a few tens of nats.
        logps = [-(torch.rand(8, generator=generator, dtype=torch.float64) * 30 + 2) for _ in range(4)]
        pi_chosen, pi_rejected, ref_chosen, ref_rejected = logps
        want = dpo_loss(*logps, beta=beta)[0].mean()
        margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
        hints = {
            "you left out the reference: the implicit reward is beta * (log pi - log ref).":
                -F.logsigmoid(beta * (pi_chosen - pi_rejected)).mean(),
            "you forgot beta: scale the log-ratios by beta inside the sigmoid.": -F.logsigmoid(margin).mean(),
            "beta goes inside the sigmoid, scaling the log-ratios, not outside multiplying the loss.":
                -beta * F.logsigmoid(margin).mean(),
            "wrong sign: the chosen answer's log-ratio minus the rejected one's, each log pi - log ref.":
                -F.logsigmoid(-beta * margin).mean(),
            "you summed over pairs: take the mean.": -F.logsigmoid(beta * margin).sum()}
        got = answer(*(t.clone() for t in logps), beta=beta)
        expect_close(got, want, f"dpo_batch_loss with beta={beta}", atol=1e-10, hints=hints)


def grpo_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """Each answer's reward relative to its group: (r - group mean) / (group std + eps).

    rewards is (P, G): G sampled answers to each of P prompts. Comparing answers to the same
    prompt replaces PPO's value network; eps keeps a group of equal rewards at 0, not 0/0.
    """
    mean = rewards.mean(dim=1, keepdim=True)           # (P, 1)
    std = rewards.std(dim=1, keepdim=True)             # unbiased, as TRL computes it
    return (rewards - mean) / (std + eps)


@exercise(chapter="03b_rl_from_feedback", solution=grpo_advantages,
          task="Given rewards (P, G), G answers per prompt, return (r - mean) / (std + eps) with the "
               "mean and the (unbiased) std taken within each prompt's group.")
def check_grpo_advantages(answer: Callable[..., Tensor]) -> None:
    """Compare with `group_advantages` on random rewards, then on 0/1 rewards with tied groups."""
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(4, 6, generator=generator, dtype=torch.float64)
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)
    hints = {
        "you normalised over the whole batch: take the mean and std of each prompt's group (dim=1).":
            (rewards - rewards.mean()) / (rewards.std() + 1e-4),
        "you normalised over the prompts (dim=0): a group is one row, the answers to one prompt.":
            (rewards - rewards.mean(0, keepdim=True)) / (rewards.std(0, keepdim=True) + 1e-4),
        "you used the population std (unbiased=False): torch.std's default, unbiased, is what TRL uses.":
            (rewards - mean) / (rewards.std(1, unbiased=False, keepdim=True) + 1e-4),
        "you only subtracted the mean: divide by the group's std (+ eps) as well.": rewards - mean,
        "add eps to the std before dividing.": (rewards - mean) / std}
    got = answer(rewards.clone(), eps=1e-4)
    expect_close(got, group_advantages(rewards, eps=1e-4), "grpo_advantages on rewards (4, 6)",
                 atol=1e-10, hints=hints)
    # Verifiable rewards are 0 or 1, and some groups get the same reward for every answer.
    binary = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    got = answer(binary.clone(), eps=1e-4)
    if isinstance(got, Tensor) and got.isnan().any():
        raise ExerciseFailed("grpo_advantages on groups whose answers all got the same reward: NaN. Their "
                             "std is 0, so add eps to the std: such a group teaches nothing, advantage 0.")
    expect_close(got, group_advantages(binary, eps=1e-4), "grpo_advantages on 0/1 rewards", atol=1e-10)


def kl_per_token(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Each sampled token's estimate of KL(pi || ref): exp(d) - d - 1 with d = log ref - log pi.

    Averaged over tokens that pi sampled it is unbiased, and unlike -d it is never negative, so
    the penalty never rewards a token (Schulman's "k3"; GRPO and TRL use it).
    """
    d = ref_logps - logps
    return torch.exp(d) - d - 1


@exercise(chapter="03b_rl_from_feedback", solution=kl_per_token,
          task="Given per-token log-probs under the policy and the reference, return each token's estimate "
               "exp(d) - d - 1 of KL(pi || ref), with d = log ref - log pi.")
def check_kl_per_token(answer: Callable[..., Tensor]) -> None:
    """Compare with `kl_k3` on log-probs of sampled tokens, some equal under both models."""
    generator = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 5, generator=generator, dtype=torch.float64) * 4
    ref_logps = logps + torch.randn(3, 5, generator=generator, dtype=torch.float64) * 0.5
    ref_logps[0] = logps[0]                          # where the two agree the estimate is 0
    d = ref_logps - logps
    hints = {
        "you took d = log pi - log ref; the estimate uses d = log ref - log pi (exp(d) - d - 1).":
            torch.exp(-d) + d - 1,
        "you returned log pi - log ref (the plain estimate, 'k1'): it is unbiased but can be negative; "
        "use exp(d) - d - 1.": -d,
        "you left out the - 1: exp(d) - d is 1 where the two models agree; the estimate must be 0 there.":
            torch.exp(d) - d,
        "you returned d^2 / 2 ('k2', biased); use exp(d) - d - 1.": d**2 / 2,
    }
    expect_close(answer(logps.clone(), ref_logps.clone()), kl_k3(logps, ref_logps),
                 "kl_per_token on log-probs (3, 5)", atol=1e-10, hints=hints)


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("dpo_first_loss", chapter="03_rlhf_preferences",
        question="DPO starts with the policy equal to its reference. What is the DPO loss of the first batch "
                 "of preference pairs, before any update, at beta = 0.1, in nats?",
        form=Number(rel=0.2, low=0, unit="nats"))


def _wasted_share_fits_p(finding: dict) -> str | None:
    # A group of G answers all scores the same with probability p^G + (1-p)^G; a thousand simulated
    # groups land within a few points of it, so 10 points apart means a different measurement.
    p, sizes, shares = finding["p"], finding["group_sizes"], finding["wasted_percent"]
    if len(sizes) != len(shares):
        return None                                  # one_value_per says what is wrong
    far = [G for G, share in zip(sizes, shares) if abs(share - 100 * (p**G + (1 - p) ** G)) > 10]
    return (f"wasted_percent for group sizes {far} is far from what a right-answer probability p = {p} "
            "gives: count the groups whose answers all got the same reward (all advantages 0), as a "
            "percentage of the groups, with enough groups (a thousand)") if far else None


predict("grpo_easy_prompt_wasted", chapter="03b_rl_from_feedback",
        question="GRPO samples groups of 8 answers, rewarded 1 if right and 0 if not, for a question the "
                 "policy already answers right with probability 0.9. What percentage of its groups teach "
                 "nothing (every answer got the same reward)?",
        form=Number(rel=0.25, low=0, high=100, unit="%"))


experiment("reward_model_data", chapter="03_rlhf_preferences",
           question="How many preference pairs does a reward model need? Train reward models on two sizes of "
                    "the training pairs or more, measure each one's held-out pairwise accuracy (the share of "
                    "held-out pairs whose chosen answer it scores higher), and say what you see.",
           fields={"pairs": Field(list, item=int, low=1, min_len=2),
                   "accuracy": Field(list, item=float, low=0, high=1, min_len=2),
                   "conclusion": Field(str, min_len=20)},
           checks=(one_value_per("pairs", ["accuracy"], "size", "sizes"),))


experiment("grpo_group_size", chapter="03b_rl_from_feedback",
           question="GRPO learns nothing from a group whose answers all get the same reward. For a question "
                    "the policy answers right with probability p, how does the share of such groups depend "
                    "on the group size G? Simulate 0/1 rewards for many groups at your p and three group "
                    "sizes or more, compute their advantages with group_advantages, measure the percentage "
                    "of groups whose advantages are all zero, and say what it means for choosing G and for "
                    "questions that are too easy or too hard.",
           fields={"p": Field(float, low=0, high=1),
                   "group_sizes": Field(list, item=int, low=2, min_len=3),
                   "wasted_percent": Field(list, item=float, low=0, high=100, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("group_sizes", ["wasted_percent"], "group size", "group sizes"),
                   _wasted_share_fits_p))
