import copy

import pytest
import torch

from ftcourse.batching import pad_pairs
from ftcourse.data import load_task
from ftcourse.dpo import (
    DPO,
    dpo_loss,
    dpo_loss_fn,
    preference_accuracy,
    sequence_logprobs,
    tokenize_pairs,
    train_dpo,
)
from ftcourse.lora import LoRA, apply_lora, lora_layers
from ftcourse.tolerance import assert_close, bound, loss_path
from ftcourse.train import TrainConfig


@pytest.fixture(scope="module")
def pairs():
    return [dict(r) for r in load_task("preferences")["train"].select(range(6))]


def perturbed(model, seed=0, scale=0.02):
    """A policy that differs from the reference, so the log-ratios are not all zero."""
    policy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return policy


@pytest.mark.equivalence
def test_dpo_loss_in_float64_is_the_formula():
    pi_c, pi_r, ref_c, ref_r = (torch.tensor(v, dtype=torch.float64) for v in
                                ([-3.0, -1.0], [-2.0, -4.0], [-2.5, -1.5], [-2.5, -3.0]))
    losses, chosen, rejected = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    margin = 0.5 * ((pi_c - ref_c) - (pi_r - ref_r))
    # Four log-probs into a margin (4 roundings), then log-sigmoid (a few more): n = 8.
    assert_close(losses, torch.log1p(torch.exp(-margin)), n=8, scale=margin.abs().max().item())
    assert_close(chosen - rejected, margin, n=8)


@pytest.mark.equivalence
def test_loss_rewards_and_logprobs_match_trl_dpo_trainer(base, pairs, tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = base
    policy, reference = perturbed(model), copy.deepcopy(model)
    dataset = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": p["prompt"]}],
         "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, beta=0.1,
                     per_device_train_batch_size=len(pairs), max_length=None, dataset_num_proc=None,
                     gradient_checkpointing=False)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=dataset, processing_class=tokenizer)
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, dict(trl_batch))
    trl_metrics = {k: sum(v) / len(v) for k, v in trainer._metrics["eval"].items()}   # eval mode: no dropout

    batch = pad_pairs(tokenize_pairs(tokenizer, pairs), tokenizer.pad_token_id)
    with torch.no_grad():
        loss_sum, count, metrics = dpo_loss_fn(reference, beta=0.1)(policy.eval(), batch)
        pi_chosen, pi_rejected = sequence_logprobs(policy, batch).chunk(2)
        ref_chosen, ref_rejected = sequence_logprobs(reference, batch).chunk(2)
    # Summed log-probs of a sequence: a loss path. Rewards are beta * (policy - reference) of
    # them, and the loss moves no more than its margin does (log-sigmoid's slope is below 1).
    n = loss_path(model.config, batch["input_ids"].shape[1], batch["input_ids"].shape[1]) + 2
    logps = torch.cat([pi_chosen, pi_rejected]).abs().max().item()
    f32 = torch.float32
    assert_close(pi_chosen.mean().item(), trl_metrics["logps/chosen"], n=n, scale=logps, dtype=f32)
    assert_close(pi_rejected.mean().item(), trl_metrics["logps/rejected"], n=n, scale=logps, dtype=f32)
    rewards = 2 * 0.1 * logps     # beta times a difference of two log-probs
    assert_close(metrics["chosen_reward"].item() / count, trl_metrics["rewards/chosen"], n=n, scale=rewards,
                 dtype=f32)
    assert_close(metrics["reward_margin"].item() / count, trl_metrics["rewards/margins"], n=n,
                 scale=2 * rewards, dtype=f32)
    assert_close(loss_sum / count, trl_loss, n=n, scale=2 * rewards, msg="loss")
    # A count of positive margins: equal, since no margin lies within rounding of zero.
    margins = 0.1 * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))
    assert margins.abs().min() > bound(f32, n, 2 * rewards)
    assert metrics["reward_accuracy"].item() / count == trl_metrics["rewards/accuracies"]


@pytest.mark.equivalence
def test_lora_policy_uses_itself_without_adapters_as_reference(base, pairs):
    model, tokenizer = base
    policy = apply_lora(copy.deepcopy(model), LoRA(r=4))
    for layer in lora_layers(policy).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    batch = pad_pairs(tokenize_pairs(tokenizer, pairs), tokenizer.pad_token_id)
    with torch.no_grad():
        shared = dpo_loss_fn(None, 0.1)(policy, batch)
        copied = dpo_loss_fn(model, 0.1)(policy, batch)
    n = loss_path(model.config, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    assert_close(shared[0], copied[0], n=n)


def test_dpo_training_raises_preference_accuracy(base):
    model, tokenizer = base
    data = load_task("preferences")
    policy = copy.deepcopy(model)
    before = preference_accuracy(policy, tokenizer, data["validation"]).mean()
    result = train_dpo(policy, tokenizer, data["train"], TrainConfig(epochs=2, batch_size=8, lr=1e-4),
                       progress=False)
    assert result.history[-1]["reward_accuracy"] > 0.5
    assert preference_accuracy(policy, tokenizer, data["validation"]).mean() > before


def test_beta_must_be_positive():
    with pytest.raises(ValueError, match=r"DPO.beta must be > 0, got 0"):
        DPO(beta=0)


def test_pair_logprob_shifts_are_zero_against_itself_and_give_the_implicit_margin(base):
    from ftcourse.dpo import pair_logprob_shifts, pair_logprobs

    model, tokenizer = base
    pairs = list(load_task("preferences")["test"])[:6]
    chosen, rejected = pair_logprob_shifts(model, model, tokenizer, pairs)
    assert (chosen == 0).all() and (rejected == 0).all()
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.model.norm.weight.mul_(1.2)
    chosen, rejected = pair_logprob_shifts(moved, model, tokenizer, pairs)
    expected = pair_logprobs(moved, tokenizer, pairs) - pair_logprobs(model, tokenizer, pairs)
    assert (chosen == expected[:, 0]).all() and (rejected == expected[:, 1]).all() and (chosen != 0).any()
    logprobs = pair_logprobs(moved, tokenizer, pairs)
    assert (preference_accuracy(moved, tokenizer, pairs) == (logprobs[:, 0] > logprobs[:, 1])).all()
