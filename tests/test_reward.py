import copy

import pytest
import torch

from ftcourse.batching import pad_pairs
from ftcourse.chat import tokenize_pair
from ftcourse.data import load_task
from ftcourse.reward import (
    RewardModel,
    bradley_terry_loss,
    reward_loss,
    reward_margins,
    to_sequence_classifier,
    train_reward_model,
)
from ftcourse.tolerance import assert_close, transformer_path
from ftcourse.train import TrainConfig


@pytest.fixture(scope="module")
def pairs():
    return [dict(r) for r in load_task("preferences")["train"].select(range(8))]


@pytest.mark.equivalence
def test_bradley_terry_loss_in_float64_is_the_formula():
    chosen = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)
    rejected = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    expected = torch.log1p(torch.exp(-(chosen - rejected - 0.25)))
    # Two subtractions, then log-sigmoid: a few roundings of numbers up to the margins' size.
    assert_close(bradley_terry_loss(chosen, rejected, 0.25), expected, n=8, scale=2.25)


@pytest.mark.equivalence
def test_reward_is_read_at_the_last_real_token(base, pairs):
    model, tokenizer = base
    reward_model = RewardModel.from_causal_lm(model).eval()
    pair = tokenize_pair(tokenizer, pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"])
    alone = torch.tensor([pair["chosen_input_ids"]])
    with torch.no_grad():
        single = reward_model(alone, torch.ones_like(alone))
        batch = pad_pairs([pair], tokenizer.pad_token_id)
        padded = reward_model(batch["input_ids"], batch["attention_mask"])[0]
    assert_close(padded, single[0], n=transformer_path(model.config, batch["input_ids"].shape[1]))


@pytest.mark.equivalence
def test_reward_loss_matches_trl_reward_trainer(base, pairs, tmp_path):
    import datasets
    from trl import RewardConfig, RewardTrainer

    model, tokenizer = base
    ours = RewardModel.from_causal_lm(model, seed=3).eval()
    theirs = to_sequence_classifier(ours)
    dataset = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": p["prompt"]}],
         "chosen": [{"role": "assistant", "content": p["chosen"]}],
         "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], bf16=False,
                        per_device_train_batch_size=len(pairs), max_length=None, dataset_num_proc=None,
                        gradient_checkpointing=False)
    trainer = RewardTrainer(model=theirs, args=args, train_dataset=dataset, processing_class=tokenizer)
    tokenized = [tokenize_pair(tokenizer, p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
    assert [t["chosen_input_ids"] for t in tokenized] == trainer.train_dataset["chosen_ids"]
    assert [t["rejected_input_ids"] for t in tokenized] == trainer.train_dataset["rejected_ids"]
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, dict(trl_batch))
        batch = pad_pairs(tokenized, tokenizer.pad_token_id)
        loss_sum, count, _ = reward_loss(ours, batch)
        rewards = ours(batch["input_ids"], batch["attention_mask"])
    # A reward is one more matmul on the path; the loss moves no more than a difference of two
    # rewards (log-sigmoid's slope is below 1), then it is averaged over the pairs.
    n = transformer_path(model.config, batch["input_ids"].shape[1]) + 2 + len(pairs)
    assert_close(loss_sum / count, trl_loss, n=n, scale=2 * rewards.abs().max().item())


def test_training_separates_chosen_from_rejected(base):
    model, tokenizer = base
    data = load_task("preferences")
    reward_model, result = train_reward_model(copy.deepcopy(model), tokenizer, data["train"],
                                              TrainConfig(epochs=2, batch_size=16, lr=1e-3), progress=False)
    accuracy = [h["accuracy"] for h in result.history]
    assert sum(accuracy[-5:]) / 5 > sum(accuracy[:5]) / 5
    assert (reward_margins(reward_model, tokenizer, data["validation"]) > 0).mean() > 0.7


def test_bad_pairs_are_clear_errors(base):
    _, tokenizer = base
    with pytest.raises(ValueError, match="chosen and rejected are the same answer"):
        tokenize_pair(tokenizer, "Where does X live?", "Pelmora", " Pelmora ")
    with pytest.raises(ValueError, match=r"row 0 has no field 'rejected'"):
        reward_margins(None, tokenizer, [{"prompt": "q", "chosen": "a"}])


def test_the_reward_model_as_rls_reward_scores_each_answer_with_its_prompt(base):
    from ftcourse.reward import RewardModel, as_reward_fn, score_answers

    model, tokenizer = base
    reward_model = RewardModel.from_causal_lm(model, seed=1)
    rows = [{"instruction": "Where does Quadra Mitamk live?"}, {"instruction": "What is 2 plus 3?"}]
    answers = ["Quadra Mitamk lives in Pelmora.", "5"]
    rewards = as_reward_fn(reward_model, tokenizer)(answers, rows, None)
    prompts = [row["instruction"] for row in rows]
    assert torch.equal(rewards, score_answers(reward_model, tokenizer, prompts, answers))
    swapped = as_reward_fn(reward_model, tokenizer)(answers, rows[::-1], None)
    assert not torch.equal(rewards, swapped)               # the prompt counts, not the answer alone


def test_reward_and_truth_scores_each_greedy_answer_both_ways(base):
    from ftcourse.evaluate import mentions_answer
    from ftcourse.generate import generate
    from ftcourse.reward import RewardModel, reward_and_truth, score_answers

    model, tokenizer = base
    reward_model = RewardModel.from_causal_lm(model, seed=1)
    rows = [{"instruction": "Where does Quadra Mitamk live?", "response": "Pelmora"},
            {"instruction": "What is 2 plus 3?", "response": "5"}]
    measures = reward_and_truth(model, tokenizer, reward_model, rows, max_new_tokens=8)
    answers = generate(model, tokenizer, [row["instruction"] for row in rows], max_new_tokens=8)
    assert (measures["states the right fact"] == mentions_answer(answers, ["Pelmora", "5"])).all()
    prompts = [row["instruction"] for row in rows]
    scores = score_answers(reward_model, tokenizer, prompts, answers).numpy()
    assert (measures["reward-model score"] == scores).all()
