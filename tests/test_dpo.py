import copy

import pytest
import torch

from ftcourse.chat import pad_pairs
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


def test_dpo_loss_in_float64_is_the_formula():
    pi_c, pi_r, ref_c, ref_r = (torch.tensor(v, dtype=torch.float64) for v in
                                ([-3.0, -1.0], [-2.0, -4.0], [-2.5, -1.5], [-2.5, -3.0]))
    losses, chosen, rejected = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    margin = 0.5 * ((pi_c - ref_c) - (pi_r - ref_r))
    torch.testing.assert_close(losses, torch.log1p(torch.exp(-margin)), rtol=0, atol=1e-12)
    torch.testing.assert_close(chosen - rejected, margin, rtol=0, atol=1e-12)


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
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, beta=0.1,
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
    torch.testing.assert_close(loss_sum / count, trl_loss, rtol=0, atol=1e-5)
    assert abs(metrics["chosen_reward"] / count - trl_metrics["rewards/chosen"]) < 1e-5
    assert abs(metrics["reward_margin"] / count - trl_metrics["rewards/margins"]) < 1e-5
    assert abs(metrics["reward_accuracy"] / count - trl_metrics["rewards/accuracies"]) < 1e-6
    assert abs(pi_chosen.mean() - trl_metrics["logps/chosen"]) < 1e-4
    assert abs(pi_rejected.mean() - trl_metrics["logps/rejected"]) < 1e-4


def test_lora_policy_uses_itself_without_adapters_as_reference(base, pairs):
    model, tokenizer = base
    policy = apply_lora(copy.deepcopy(model), LoRA(r=4))
    for layer in lora_layers(policy).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    batch = pad_pairs(tokenize_pairs(tokenizer, pairs), tokenizer.pad_token_id)
    with torch.no_grad():
        shared = dpo_loss_fn(None, 0.1)(policy, batch)
        copied = dpo_loss_fn(model, 0.1)(policy, batch)
    torch.testing.assert_close(shared[0], copied[0], rtol=0, atol=1e-6)


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
