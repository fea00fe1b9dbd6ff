"""A stored run, loaded, is the run trained: the same weights, history and random state after it."""

import copy
from dataclasses import asdict, replace

import pytest
import torch

import ftcourse.dpo
import ftcourse.reward
import ftcourse.sft
from ftcourse.data import load_task
from ftcourse.dpo import DPO, train_dpo
from ftcourse.lora import LoRA
from ftcourse.reward import train_reward_model
from ftcourse.run_store import run_key
from ftcourse.sft import finetune, tokenize_instructions
from ftcourse.train import TrainConfig

ROWS = [{"instruction": f"What is {a} plus {b}?", "response": str(a + b)} for a in range(4) for b in range(3)]
CONFIG = TrainConfig(max_steps=4, batch_size=4, lr=1e-2, seed=3)
METHODS = {"full": "full", "LoRA with dropout": LoRA(r=4, alpha=8, targets="all-linear", dropout=0.1)}


def trainable(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS.values(), ids=METHODS.keys())
def test_a_loaded_run_is_the_trained_run(tiny_llama, tokenizer, method, tmp_path, monkeypatch, capsys):
    fresh, fresh_result = finetune(copy.deepcopy(tiny_llama), tokenizer, ROWS, method, CONFIG, progress=False)
    fresh_rng = torch.get_rng_state()

    stored, stored_result = finetune(copy.deepcopy(tiny_llama), tokenizer, ROWS, method, CONFIG,
                                     reuse=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 1 and "Loaded" not in capsys.readouterr().out

    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(ftcourse.sft, "train", no_training)
    torch.manual_seed(99)                            # whatever came before, the state after is the run's
    loaded, loaded_result = finetune(copy.deepcopy(tiny_llama), tokenizer, ROWS, method, CONFIG,
                                     reuse=tmp_path, progress=False)
    assert "Loaded this run from" in capsys.readouterr().out
    assert torch.equal(torch.get_rng_state(), fresh_rng)
    assert not loaded.training
    for model in (stored, loaded):
        for name, tensor in trainable(fresh).items():
            assert torch.equal(trainable(model)[name], tensor), name
    assert asdict(loaded_result) == asdict(stored_result)
    assert [h["loss"] for h in loaded_result.history] == [h["loss"] for h in fresh_result.history]


def test_anything_the_run_depends_on_changes_its_key(tiny_llama, tokenizer, monkeypatch):
    examples = tokenize_instructions(tokenizer, ROWS)
    key = run_key(tiny_llama, examples, CONFIG)
    assert run_key(copy.deepcopy(tiny_llama), copy.deepcopy(examples), CONFIG) == key     # same run, same key

    other_weights = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        other_weights.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-6
    frozen = copy.deepcopy(tiny_llama)
    frozen.model.embed_tokens.weight.requires_grad_(False)
    other_rows = tokenize_instructions(tokenizer, [*ROWS[:-1], {**ROWS[-1], "response": "12"}])
    changed = {"a weight": run_key(other_weights, examples, CONFIG),
               "what trains": run_key(frozen, examples, CONFIG),
               "the method's modules": run_key(LoRA(r=4).apply(copy.deepcopy(tiny_llama)), examples, CONFIG),
               "an example": run_key(tiny_llama, other_rows, CONFIG),
               "the config": run_key(tiny_llama, examples, replace(CONFIG, lr=2e-2)),
               "the seed": run_key(tiny_llama, examples, replace(CONFIG, seed=4)),
               "the loss": run_key(tiny_llama, examples, CONFIG, loss=repr(DPO(beta=0.1))),
               "the loss's setting": run_key(tiny_llama, examples, CONFIG, loss=repr(DPO(beta=1.0)))}
    monkeypatch.setattr("ftcourse.run_store.code_digest", lambda: "another version of the code")
    changed["the code"] = run_key(tiny_llama, examples, CONFIG)
    assert len(set(changed.values()) | {key}) == len(changed) + 1, changed


def test_a_half_written_run_is_trained_again(tiny_llama, tokenizer, tmp_path, capsys):
    finetune(copy.deepcopy(tiny_llama), tokenizer, ROWS, "full", CONFIG, reuse=tmp_path, progress=False)
    (folder,) = tmp_path.iterdir()
    (folder / "result.json").unlink()                     # written last: without it the run is not whole
    finetune(copy.deepcopy(tiny_llama), tokenizer, ROWS, "full", CONFIG, reuse=tmp_path, progress=False)
    assert "Loaded" not in capsys.readouterr().out and (folder / "result.json").is_file()


def test_a_run_with_evaluations_is_not_reused(tiny_llama, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="cannot reuse a run with an eval_fn"):
        finetune(tiny_llama, tokenizer, ROWS, "full", CONFIG, reuse=tmp_path, eval_fn=lambda m: {},
                 progress=False)


# Learning from preferences: DPO's policy and the reward model are stored and loaded the same way.
PREFERENCE_TRAINERS = {
    "DPO": (ftcourse.dpo, lambda model, tokenizer, pairs, reuse: (
        model, train_dpo(model, tokenizer, pairs, CONFIG, DPO(beta=0.5), reuse=reuse, progress=False))),
    "reward model": (ftcourse.reward, lambda model, tokenizer, pairs, reuse: train_reward_model(
        model, tokenizer, pairs, CONFIG, reuse=reuse, progress=False))}


@pytest.mark.parametrize("trainer", PREFERENCE_TRAINERS, ids=PREFERENCE_TRAINERS.keys())
def test_a_loaded_preference_run_is_the_trained_run(trainer, tiny_llama, tokenizer, tmp_path, monkeypatch,
                                                    capsys):
    module, run = PREFERENCE_TRAINERS[trainer]
    pairs = [dict(row) for row in load_task("preferences")["train"].select(range(8))]
    fresh, fresh_result = run(copy.deepcopy(tiny_llama), tokenizer, pairs, None)
    fresh_rng = torch.get_rng_state()
    run(copy.deepcopy(tiny_llama), tokenizer, pairs, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(module, "train", no_training)
    torch.manual_seed(99)
    loaded, loaded_result = run(copy.deepcopy(tiny_llama), tokenizer, pairs, tmp_path)
    assert "Loaded this run from" in capsys.readouterr().out
    assert torch.equal(torch.get_rng_state(), fresh_rng)
    for name, tensor in trainable(fresh).items():
        assert torch.equal(trainable(loaded)[name], tensor), name
    assert [h["loss"] for h in loaded_result.history] == [h["loss"] for h in fresh_result.history]


def test_dpo_with_a_reference_of_your_own_is_not_reused(tiny_llama, tokenizer, tmp_path):
    pairs = [dict(row) for row in load_task("preferences")["train"].select(range(4))]
    with pytest.raises(ValueError, match="cannot reuse a run with a reference of your own"):
        train_dpo(copy.deepcopy(tiny_llama), tokenizer, pairs, CONFIG, reference=tiny_llama, reuse=tmp_path,
                  progress=False)
