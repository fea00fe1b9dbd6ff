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
    with pytest.raises(ValueError, match="epochs_per_batch must be >= 1, got 0"):
        GRPO(epochs_per_batch=0)


# ---------------------------------------------------------------- TRL's GRPOTrainer, the twin

def trl_grpo(model, tokenizer, tmp_path, bias_correction: bool, beta: float = 0.04):
    """A GRPOTrainer on `model` (never trained here: its loss is called on a batch we build)."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    prompts = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "What is 2 plus 2?"}]}] * 4)
    args = GRPOConfig(output_dir=str(tmp_path), beta=beta, epsilon=0.2, loss_type="grpo", num_generations=2,
                      per_device_train_batch_size=2, max_completion_length=8, report_to=[], bf16=False,
                      use_cpu=True, use_bias_correction_kl=bias_correction, disable_tqdm=True)
    return GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                       args=args, train_dataset=prompts, processing_class=tokenizer)


def grpo_batch(seed: int = 0):
    """Prompts (left padded) and completions (right padded) of 3 rows, and the policy that sampled
    them and the reference as log-probs 0.3 and 0.2 (in standard deviation) away from the model's."""
    generator = torch.Generator().manual_seed(seed)
    prompt_ids, completion_ids = torch.randint(7, 1000, (3, 4), generator=generator), \
        torch.randint(7, 1000, (3, 5), generator=generator)
    prompt_mask, completion_mask = torch.ones(3, 4, dtype=torch.long), torch.ones(3, 5, dtype=torch.long)
    prompt_mask[0, :2] = 0
    completion_mask[1, 3:] = 0
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.tensor([1.0, -0.5, 0.3]),
            "noise": torch.randn(2, 3, 5, generator=generator)}


@pytest.mark.equivalence
@pytest.mark.parametrize("bias_correction", [True, False])
def test_grpo_loss_and_kl_equal_trls(base, tmp_path, bias_correction):
    from ftcourse.batching import token_logprobs
    from ftcourse.tolerance import loss_path

    model, tokenizer = copy.deepcopy(base[0]).eval(), base[1]
    trainer = trl_grpo(model, tokenizer, tmp_path, bias_correction)
    batch = grpo_batch()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        theirs_logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, attention, 5)
        labels = torch.cat([torch.full_like(batch["prompt_ids"], -100),
                            batch["completion_ids"].masked_fill(batch["completion_mask"] == 0, -100)], 1)
        ours_logps = token_logprobs(model(input_ids=ids, attention_mask=attention).logits, labels)[:, -5:]
    mask = batch["completion_mask"].float()
    # Our per-token log-probs are TRL's (on the answer tokens; ours are 0 elsewhere).
    assert_close(ours_logps * mask, theirs_logps * mask, n=loss_path(model.config, ids.shape[1], 1),
                 scale=theirs_logps.abs().max().item())
    old, ref = theirs_logps + 0.3 * batch["noise"][0], theirs_logps + 0.2 * batch["noise"][1]
    inputs = {key: batch[key] for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                                          "advantages")}
    inputs |= {"old_per_token_logps": old, "ref_per_token_logps": ref}
    with torch.no_grad():
        theirs = trainer._compute_loss(model, inputs)
    ours, metrics = grpo_loss(theirs_logps, old, batch["advantages"], mask, clip_eps=0.2, ref_logps=ref,
                              kl_beta=0.04, importance_weighted_kl=bias_correction)
    assert metrics["clipped"] > 0.3                          # the clip acts on this batch
    # Per token: a ratio, a clip, a KL; then a mean over 5 tokens and over 3 answers.
    assert_close(ours, theirs, n=5 + 3 + 8, scale=1.0)
    assert_close(torch.tensor(metrics["kl"]), torch.tensor(trainer._metrics["eval"]["kl"][-1]), n=15 + 8,
                 scale=1.0)


def test_kl_k3_is_zero_at_the_reference_and_unbiased_for_samples():
    from ftcourse.rl import kl_k3

    logps = torch.log(torch.tensor([0.5, 0.2, 0.9]))
    assert torch.equal(kl_k3(logps, logps), torch.zeros(3))
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])      # KL(p || q) by its sum
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = kl_k3(p.log()[samples], q.log()[samples]).mean()
    assert abs(estimate - (p * (p / q).log()).sum()) < 0.01


def test_several_epochs_per_batch_engage_the_clip(base):
    model, tokenizer = base
    rows = [{"instruction": "Where does Quadra Mitamk live?", "response": "Pelmora"}] * 4
    shorter_is_better = lambda answers, rows, sequences: torch.tensor([-len(a) / 10 for a in answers])
    runs = {epochs: train_grpo(copy.deepcopy(model), tokenizer, rows, shorter_is_better,
                               GRPO(steps=3, prompts_per_step=2, group_size=4, lr=3e-3, max_new_tokens=6,
                                    epochs_per_batch=epochs), progress=False) for epochs in (1, 3)}
    assert all(row["clipped"] == 0 for row in runs[1])         # one pass: ratio 1, nothing to clip
    assert max(row["clipped"] for row in runs[3]) > 0
    assert all(row["kl"] >= 0 for row in runs[3])


def test_sampled_kl_is_zero_against_itself_and_positive_after_training(base):
    from ftcourse.rl import sampled_kl

    model, tokenizer = base
    prompts = ["Where does Quadra Mitamk live?", "What is 2 plus 3?"]
    assert torch.equal(sampled_kl(model, model, tokenizer, prompts, max_new_tokens=6), torch.zeros(2))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.lm_head.weight.mul_(1.5)
    assert sampled_kl(moved, model, tokenizer, prompts * 8, max_new_tokens=6).mean() > 0
