"""Predict-then-run and open experiments of chapters 00-04: the measurement each notebook cell makes
lands in its prediction's form, a filled-in answer passes, and a malformed one fails with every
problem listed. The answers below are measured with the package, as the notebook cells measure them."""

import copy
import math
import re

import numpy as np
import pytest
import torch

from ftcourse.batching import pad_batch
from ftcourse.data import load_task
from ftcourse.dpo import DPO, train_dpo
from ftcourse.evaluate import bootstrap_ci
from ftcourse.exercises import EXERCISES, ExerciseFailed, check_finding, check_prediction
from ftcourse.lora import LoRA
from ftcourse.memory import GB, Setup, estimate
from ftcourse.params import REAL_MODELS, count_parameters, flops_per_token
from ftcourse.rl import group_advantages
from ftcourse.sft import tokenize_instructions
from ftcourse.train import TrainConfig

CONCLUSION = "a conclusion of more than forty characters, defended in class"


def first_dpo_loss(base, beta: float) -> float:
    """The loss `train_dpo` logs at its first step, as chapter 3's cell reads it."""
    model, tokenizer = base
    pairs = load_task("preferences", profile="tiny")["train"]
    result = train_dpo(copy.deepcopy(model), tokenizer, pairs, TrainConfig(max_steps=1, batch_size=16),
                       DPO(beta=beta), progress=False)
    return result.history[0]["loss"]


def loss_token_share(base) -> float:
    """The percentage of the instruction training tokens that carry a label, as chapter 2's cell counts."""
    examples = tokenize_instructions(base[1], load_task("instructions", profile="tiny")["train"])
    labelled = sum(label != -100 for example in examples for label in example["labels"])
    return 100 * labelled / sum(len(example["input_ids"]) for example in examples)


def interval_width() -> float:
    interval = bootstrap_ci(np.array([1.0] * 50 + [0.0] * 50), seed=0)
    return 100 * (interval.high - interval.low)


def long_context_ratio() -> float:
    per_token = {T: flops_per_token(REAL_MODELS["Llama-3-8B"], T)["forward"] for T in (512, 32_768)}
    return per_token[32_768] / per_token[512]


def long_batch_ratio() -> float:
    long_batch = dict(precision="bf16-mixed", batch_size=8, seq_len=2048)
    peaks = [estimate(REAL_MODELS["Llama-2-7B"], Setup(method=method, **long_batch)).peak
             for method in ("full", LoRA(r=8))]
    return peaks[0] / peaks[1]


MEASURE = {"bootstrap_interval_width": lambda base: interval_width(),
           "long_context_flops": lambda base: long_context_ratio(),
           "loss_token_share": loss_token_share,
           "dpo_first_loss": lambda base: first_dpo_loss(base, 0.1),
           "long_batch_memory_ratio": lambda base: long_batch_ratio()}
EARLY = ("00_quickstart", "01_transformer_internals", "02_sft_instruction_tuning", "03_rlhf_preferences",
         "04_full_vs_peft")


def test_every_early_chapter_has_a_prediction_and_an_experiment():
    kinds = {chapter: sorted(task.kind for task in EXERCISES.values() if task.chapter == chapter
                             and task.kind != "function") for chapter in EARLY}
    assert all(found == ["experiment", "prediction"] for found in kinds.values()), kinds
    assert {name for name, task in EXERCISES.items() if task.kind == "prediction" and task.chapter in EARLY} \
        == set(MEASURE)


@pytest.mark.parametrize("name", sorted(MEASURE))
def test_prediction_measured_as_in_the_notebook_judges_a_valid_guess(name, base, recorded, capsys):
    measured = MEASURE[name](base)
    form = EXERCISES[name].form
    assert form.valid(measured), f"{name}: the notebook's measurement {measured} is outside {form.describe()}"
    assert check_prediction(name, measured * (1 + form.rel / 2), measured) is True
    assert ": right (off by" in capsys.readouterr().out
    assert check_prediction(name, measured * (2 + form.rel), measured) is True   # wrong, but committed
    assert "missed by" in capsys.readouterr().out
    assert [outcome.passed for outcome in recorded] == [True, True]


@pytest.mark.parametrize("name", sorted(MEASURE))
@pytest.mark.parametrize("wrong", ["0.7", -1, True, [2.0]])
def test_prediction_of_the_wrong_form_names_the_form(name, wrong, recorded):
    form = rf"{name}: your prediction must be a number .*got {re.escape(repr(wrong))}"
    with pytest.raises(ExerciseFailed, match=form):
        check_prediction(name, wrong, 1.0)
    assert recorded[-1].passed is False


def test_percentage_predictions_refuse_more_than_100(recorded):
    for name in ("bootstrap_interval_width", "loss_token_share"):
        with pytest.raises(ExerciseFailed, match=r"must be a number in \[0, 100\]"):
            check_prediction(name, 150, 20.0)


def test_dpo_starts_at_log_2_whatever_beta(base):
    # The point of the prediction: with the policy equal to its reference, every margin is 0.
    for beta in (0.1, 1.0):
        assert math.isclose(first_dpo_loss(base, beta), math.log(2), rel_tol=1e-6)


# ---------------------------------------------------------------- open experiments: answers measured here

def kv_heads_finding(kv_heads=(1, 4, 8, 32)) -> dict:
    config = REAL_MODELS["Llama-3-8B"]
    shares = [count_parameters({**config, "num_key_value_heads": k}).ffn_share_of_layers for k in kv_heads]
    return {"kv_heads": list(kv_heads), "ffn_share_of_layers": shares, "conclusion": CONCLUSION}


def padding_finding(batch_sizes=(1, 2, 4, 8)) -> dict:
    examples = [{"input_ids": [5] * length, "labels": [5] * length} for length in (3, 9, 4, 4, 12, 2, 7, 5)]
    percent = []
    for size in batch_sizes:
        masks = [pad_batch(examples[start:start + size], 0)["attention_mask"]
                 for start in range(0, len(examples), size)]
        percent.append(100 * (1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)))
    return {"batch_sizes": list(batch_sizes), "padding_percent": percent, "conclusion": CONCLUSION}


def grpo_finding(p=0.3, group_sizes=(2, 4, 8, 16)) -> dict:
    generator = torch.Generator().manual_seed(0)
    wasted = []
    for G in group_sizes:
        rewards = torch.bernoulli(torch.full((1000, G), p), generator=generator)
        wasted.append(100 * (group_advantages(rewards) == 0).all(dim=1).float().mean().item())
    return {"p": p, "group_sizes": list(group_sizes), "wasted_percent": wasted, "conclusion": CONCLUSION}


def memory_finding(seq_lens=(512, 2048, 8192, 32768)) -> dict:
    peaks = {checkpointing: [estimate(REAL_MODELS["Llama-2-7B"], Setup(
        method=LoRA(r=8), precision="bf16-mixed", seq_len=T, gradient_checkpointing=checkpointing)).peak / GB
        for T in seq_lens] for checkpointing in (False, True)}
    return {"seq_lens": list(seq_lens), "peak_gb": peaks[False], "peak_gb_checkpointed": peaks[True],
            "conclusion": CONCLUSION}


FACT = {"people": 30, "recall_pretraining_wordings": [1.0, 1.0], "recall_new_wordings": [0.0, 9 / 30],
        "conclusion": CONCLUSION}
REWARD_PAIRS = {"pairs": [16, 64, 256], "accuracy": [0.62, 0.75, 0.87], "conclusion": CONCLUSION}
FINDINGS = {"fact_or_sentence": lambda: FACT, "reward_model_data": lambda: REWARD_PAIRS,
            "kv_heads_ffn_share": kv_heads_finding,
            "padding_waste": padding_finding, "grpo_group_size": grpo_finding,
            "checkpointing_memory": memory_finding}


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_finding_measured_as_in_the_notebook_passes(name, recorded, capsys):
    assert check_finding(name, FINDINGS[name]()) is True
    assert "has the required form" in capsys.readouterr().out
    assert [(outcome.name, outcome.passed) for outcome in recorded] == [(name, True)]


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_finding_of_the_wrong_form_lists_every_problem(name, recorded):
    right = FINDINGS[name]()
    first, *middle, last = right                  # break the first field, the middle ones, leave out the last
    wrong = {first: "?", **{key: "not a list" for key in middle}, "notes": "an extra field"}
    with pytest.raises(ExerciseFailed) as failure:
        check_finding(name, wrong)
    message = str(failure.value)
    assert f"{len(right) + 1} problem(s)" in message, message      # each field, and the extra one
    assert f"missing field {last!r}" in message and "extra field 'notes'" in message
    for key in (first, *middle):
        assert f"{key} must be" in message
    assert recorded[-1].passed is False


@pytest.mark.parametrize("name, change, problem", [
    ("fact_or_sentence", {"recall_new_wordings": [0.0, 0.45]}, r"recall \[0.45\] cannot be measured on 30"),
    ("kv_heads_ffn_share", {"kv_heads": [1, 4, 8]}, "ffn_share_of_layers has 4 values for 3 settings"),
    ("kv_heads_ffn_share", {"kv_heads": [32, 8, 4, 1]}, "ffn_share_of_layers rises as kv_heads grows"),
    ("kv_heads_ffn_share", {"kv_heads": [1, 4, 4, 32]}, r"kv_heads \[1, 4, 4, 32\] repeat a setting"),
    ("padding_waste", {"padding_percent": [5.0, 10.0, 20.0, 30.0]}, "batch size 1 is 5.0, but a batch"),
    ("padding_waste", {"batch_sizes": [1, 2, 4]}, "padding_percent has 4 values for 3 batch sizes"),
    ("reward_model_data", {"pairs": [16, 64]}, "accuracy has 3 values for 2 sizes"),
    ("reward_model_data", {"pairs": [16, 16, 256]}, r"pairs \[16, 16, 256\] repeat a size"),
    ("grpo_group_size", {"p": 0.9}, r"wasted_percent for group sizes \[2, 4, 8, 16\] is far from"),
    ("grpo_group_size", {"group_sizes": [2, 4, 4, 16]}, r"group_sizes \[2, 4, 4, 16\] repeat a group size"),
    ("checkpointing_memory", {"peak_gb": [1.0, 2.0, 3.0]}, "peak_gb has 3 values for 4 sequence lengths"),
    ("checkpointing_memory", "swap", r"at seq_lens \[512, 2048, 8192, 32768\] the checkpointed peak is"),
])
def test_consistency_checks_catch_a_wrong_measurement(name, change, problem, recorded):
    right = FINDINGS[name]()
    if change == "swap":
        change = {"peak_gb": right["peak_gb_checkpointed"], "peak_gb_checkpointed": right["peak_gb"]}
    with pytest.raises(ExerciseFailed, match=problem):
        check_finding(name, {**right, **change})
    assert recorded[-1].passed is False


def test_a_share_rounded_to_two_digits_is_forgiven(recorded):
    assert check_finding("fact_or_sentence", {**FACT, "recall_new_wordings": [0.0, 0.33]}) is True
