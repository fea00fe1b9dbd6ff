"""Predict-then-run and open experiments of chapters 03b, 05b, 07b and 06-10: each notebook cell's
measurement, made with the package as the cell makes it, lands in its prediction's form; a filled-in
answer passes; a malformed one fails with every problem listed, and each consistency check names
what it caught."""

import copy
from pathlib import Path

import nbformat
import pytest
import torch

from ftcourse import quant
from ftcourse.data import load_task
from ftcourse.data.files import split_rows
from ftcourse.evaluate import score_task
from ftcourse.exercises import EXERCISES, ExerciseFailed, check_finding, check_prediction
from ftcourse.lora import LoRA
from ftcourse.memory import Setup, footprint_of_config
from ftcourse.params import REAL_MODELS, count_lora_parameters, linear_shapes
from ftcourse.prompts import PrefixTuning, PromptTuning
from ftcourse.retrieval import few_shot_prompt
from ftcourse.rl import group_advantages

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

CONCLUSION = "a conclusion of more than forty characters, defended in class"
LATE = {"03b_rl_from_feedback": ("grpo_easy_prompt_wasted", "grpo_group_size"),
        "05b_lora_in_practice": ("ffn_to_qv_parameters", "adapter_swap_time"),
        "06_qlora": ("nf4_uniform_weights", "quant_block_size"),
        "07_soft_prompts": ("soft_prompt_text_init", "soft_prompt_drift"),
        "07b_adapters_ia3": ("ia3_parameters_7b", "adapter_bottleneck"),
        "08_evaluation": ("zero_shot_format", "rag_passages"),
        "09_claims_ledger": ("prefix_tuning_at_scale", "claim_at_scale"),
        "10_production": ("row_split_leak", "generation_latency")}


@pytest.mark.parametrize("chapter", LATE)
def test_each_late_chapter_checks_a_prediction_then_an_experiment_before_its_summary(chapter):
    prediction, finding = LATE[chapter]
    assert [EXERCISES[prediction].kind, EXERCISES[finding].kind] == ["prediction", "experiment"]
    assert EXERCISES[prediction].chapter == EXERCISES[finding].chapter == chapter
    sources = [cell.source for cell in nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", 4).cells]
    calls = [f'check_prediction("{prediction}", prediction, measured)',
             f'check_finding("{finding}", finding)']
    where = [[i for i, source in enumerate(sources) if call in source] for call in calls]
    assert [len(cells) for cells in where] == [1, 1], where
    exercises = next(i for i, source in enumerate(sources) if source.startswith("## Exercises"))
    summary = next(i for i, source in enumerate(sources) if source.startswith("```{admonition} Summary"))
    assert exercises < where[0][0] < where[1][0] < summary
    assert "prediction = None" in sources[where[0][0]] and "finding = None" in sources[where[1][0]]
    assert sources[where[1][0] - 1].startswith(("import", "from"))     # the scratch cell the learner extends


# ---------------------------------------------------------------- the measurements, as the cells make them

def uniform_errors() -> dict[str, float]:
    uniform = torch.rand(256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {kind: round(quant.quantization_error(uniform, kind), 4) for kind in ("int4", "fp4", "nf4")}


def text_init_change(base) -> float:
    model, tokenizer = base
    text, message = "Read the message and answer with the right department.", "Route this message: my bill"
    ids = [tokenizer([s], return_tensors="pt")["input_ids"] for s in (text, message)]
    method = PromptTuning(num_virtual_tokens=ids[0].shape[1], init_text=text)
    soft = method.apply(copy.deepcopy(model), tokenizer)
    with torch.no_grad():
        as_tokens = model(torch.cat(ids, dim=1)).logits[:, ids[0].shape[1]:]
        return ((soft(ids[1]).logits - as_tokens).abs().max() / as_tokens.abs().max()).item()


def zero_shot_exact_match(base) -> float:
    rows = list(load_task("qa", profile="tiny")["test"])
    score = score_task(*base, rows, max_new_tokens=8,
                       prompt=lambda row: few_shot_prompt(row["instruction"], examples=[]))
    return 100 * score.ci.estimate


def prefix_millions() -> float:
    return footprint_of_config(REAL_MODELS["LLaMA-65B"], Setup(method=PrefixTuning(20))).trainable / 1e6


def row_split_leak() -> float:
    qa = load_task("qa", profile="tiny")
    tripled = [{**row, "row": 3 * i + repeat} for i, row in enumerate([*qa["train"], *qa["test"]])
               for repeat in range(3)]
    splits = split_rows(tripled, "row", seed=0)
    trained_on = {row["instruction"] for row in splits["train"]}
    return 100 * sum(row["instruction"] in trained_on for row in splits["test"]) / len(splits["test"])


def ffn_to_qv() -> float:
    llama = REAL_MODELS["Llama-2-7B"]
    return (count_lora_parameters(llama, LoRA(r=8, targets=("gate_proj", "up_proj", "down_proj")))
            / count_lora_parameters(llama, LoRA(r=8, targets=("q_proj", "v_proj"))))


def easy_prompt_wasted() -> float:
    rewards = torch.bernoulli(torch.full((10_000, 8), 0.9), generator=torch.Generator().manual_seed(0))
    return 100 * (group_advantages(rewards) == 0).all(dim=1).float().mean().item()


def ia3_thousands() -> float:
    llama = REAL_MODELS["Llama-2-7B"]
    shapes = linear_shapes(llama)
    per_layer = shapes["k_proj"][1] + shapes["v_proj"][1] + shapes["down_proj"][0]
    return llama["num_hidden_layers"] * per_layer / 1000


MEASURE = {"ia3_parameters_7b": lambda base: ia3_thousands(),
           "grpo_easy_prompt_wasted": lambda base: easy_prompt_wasted(),
           "ffn_to_qv_parameters": lambda base: ffn_to_qv(),
           "nf4_uniform_weights": lambda base: uniform_errors(),
           "soft_prompt_text_init": text_init_change,
           "zero_shot_format": zero_shot_exact_match,
           "prefix_tuning_at_scale": lambda base: prefix_millions(),
           "row_split_leak": lambda base: row_split_leak()}


@pytest.mark.parametrize("name", MEASURE)
def test_each_measurement_is_judged_against_a_prediction_of_the_right_form(name, base, recorded, capsys):
    measured = MEASURE[name](base)
    form = EXERCISES[name].form
    if hasattr(form, "options"):          # a Choice: the measurement picks one of the options
        answer = form.right(measured)
        assert answer in form.options
        wrong = next(option for option in form.options if option != answer)
        assert check_prediction(name, answer, measured) is True
        assert ": right." in capsys.readouterr().out
        assert check_prediction(name, wrong, measured) is True       # committing is the exercise
        assert f"missed: the measurement says {answer!r}" in capsys.readouterr().out
    else:                                 # a Number: the measurement itself is a valid prediction
        assert form.valid(measured), f"{name}: {measured} is not {form.describe()}"
        assert check_prediction(name, 1.1 * measured, measured) is True
        assert "right (off by 10%" in capsys.readouterr().out
    assert [outcome.passed for outcome in recorded] == [True] * len(recorded)


def test_the_choices_follow_the_measurement():
    # What each registered rule makes of clear measurements (the notebook's are printed in its cell).
    assert EXERCISES["nf4_uniform_weights"].form.right({"int4": 0.005, "fp4": 0.012, "nf4": 0.008}) == "int4"
    text_init = EXERCISES["soft_prompt_text_init"].form.right
    assert (text_init(0.0), text_init(1e-3), text_init(0.4)) == ("the same", "the same", "different")


@pytest.mark.parametrize("name, wrong, form", [
    ("ia3_parameters_7b", "614k", r"a number >= 0 \(thousand\)"),
    ("grpo_easy_prompt_wasted", 143, r"a number in \[0, 100\] \(%\)"),
    ("ffn_to_qv_parameters", "2.8x", r"a number >= 0"),
    ("nf4_uniform_weights", "NF4", r"one of 'int4', 'fp4', 'nf4'"),
    ("soft_prompt_text_init", True, r"one of 'the same', 'different'"),
    ("zero_shot_format", "80%", r"a number in \[0, 100\] \(%\)"),
    ("prefix_tuning_at_scale", -2, r"a number >= 0 \(million\)"),
    ("row_split_leak", 130, r"a number in \[0, 100\] \(%\)")])
def test_a_prediction_of_the_wrong_form_names_the_form(name, wrong, form, recorded):
    with pytest.raises(ExerciseFailed, match=f"{name}: your prediction must be {form}, got"):
        check_prediction(name, wrong, 1.0)
    assert recorded[-1].passed is False


# ---------------------------------------------------------------- open experiments

def measured_bits(blocksize: int, double_quant: bool) -> float:
    # A weight of 8,192 values, the smallest linear weight of the base model (k_proj, v_proj).
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(blocksize))
    return 8 * quant.quantize_4bit(weight, "nf4", blocksize, double_quant).nbytes() / weight.numel()


RIGHT = {
    "adapter_bottleneck": {"reduction_factors": [4, 16, 64], "trainable": [66560, 17472, 5184],
                           "accuracy": [0.97, 0.95, 0.81], "conclusion": CONCLUSION},
    "adapter_swap_time": {"ranks": [2, 8, 64], "swap_ms": [1.1, 1.2, 2.0], "load_base_ms": 35.0,
                          "conclusion": CONCLUSION},
    "quant_block_size": {"blocksizes": [16, 64, 1000, 8192], "errors": [0.0065, 0.0085, 0.012, 0.015],
                         "bits_per_weight": [measured_bits(16, False), measured_bits(64, True),
                                             measured_bits(1000, False), measured_bits(8192, True)],
                         "conclusion": CONCLUSION},
    "soft_prompt_drift": {"virtual_tokens": 29, "steps": 20, "learning_rates": [0.03, 0.3, 3],
                          "still_nearest": [0.69, 1 / 29, 0], "conclusion": CONCLUSION},
    "rag_passages": {"passages": [1, 2, 8], "answer_retrieved": [0.5, 1.0, 1.0],
                     "exact_match": [0.45, 0.98, 0.99], "conclusion": CONCLUSION},
    "claim_at_scale": {"claim": "peft-trainable-share", "parameters_billions": [0.0009, 6.7, 65.3],
                       "values": [8.5, 0.30, 0.15], "conclusion": CONCLUSION},
    "generation_latency": {"new_tokens": [8, 64, 256], "milliseconds": [2.9, 8.6, 44.0], "ms_per_token": 0.17,
                           "conclusion": CONCLUSION},
}


@pytest.mark.parametrize("name", RIGHT)
def test_a_finding_of_the_right_form_passes(name, recorded, capsys):
    assert check_finding(name, None) is False                      # the notebook as committed
    assert f"{name}: not attempted" in capsys.readouterr().out
    assert check_finding(name, RIGHT[name]) is True
    assert "has the required form" in capsys.readouterr().out
    assert [outcome.passed for outcome in recorded] == [False, True]


MALFORMED = {
    "adapter_bottleneck": ({"reduction_factors": [16, 64], "trainable": [17472.5, 5184],
                            "accuracy": [95, 81], "conclusion": CONCLUSION},
                           ["trainable must be a list of at least 2 int >= 1, got [17472.5, 5184]",
                            "accuracy must be a list of at least 2 float in [0, 1], got [95, 81]"]),
    "adapter_swap_time": ({"ranks": [8], "swap_ms": ["1 ms"], "load_base_ms": -3, "conclusion": CONCLUSION},
                          ["ranks must be a list of at least 2 int >= 1, got [8]",
                           "swap_ms must be a list of at least 2 float >= 0, got ['1 ms']",
                           "load_base_ms must be a float >= 0, got -3"]),
    "quant_block_size": ({"blocksizes": [64, 256], "errors": "0.008", "bits_per_weight": [0.56, 0.52, 0.5],
                          "conclusion": "smaller"},
                         ["blocksizes must be a list of at least 3 int >= 2, got [64, 256]",
                          "errors must be a list of at least 3 float in [0, 1], got str",
                          "bits_per_weight must be a list of at least 3 float in [4, 20], got [0.56",
                          "conclusion must be a str of at least 40 characters"]),
    "soft_prompt_drift": ({"virtual_tokens": 0, "steps": 20.5, "learning_rates": [0.3],
                           "still_nearest": [1.5], "conclusion": CONCLUSION, "seed": 0},
                          ["extra field 'seed'", "virtual_tokens must be an int >= 1, got 0",
                           "steps must be an int >= 1, got 20.5",
                           "learning_rates must be a list of at least 2 float >= 0, got [0.3]",
                           "still_nearest must be a list of at least 2 float in [0, 1], got [1.5]"]),
    "rag_passages": ({"passages": [0, 2, 4], "exact_match": [0.5, 0.9, True], "conclusion": CONCLUSION},
                     ["missing field 'answer_retrieved'", "passages must be a list of at least 3 int >= 1",
                      "exact_match must be a list of at least 3 float in [0, 1], got [0.5, 0.9, True]"]),
    "claim_at_scale": ({"claim": "", "parameters_billions": [7, 65], "values": ["0.3%", "0.15%", "8.5%"]},
                       ["missing field 'conclusion'", "claim must be a str of at least 3 characters",
                        "parameters_billions must be a list of at least 3 float >= 0, got [7, 65]",
                        "values must be a list of at least 3 float, got ['0.3%'"]),
    "generation_latency": ({"new_tokens": [8, 64, 256], "milliseconds": [2.9, 8.6, -1.0],
                            "ms_per_token": "0.17 ms", "conclusion": CONCLUSION},
                           ["milliseconds must be a list of at least 3 float >= 0, got [2.9, 8.6, -1.0]",
                            "ms_per_token must be a float >= 0, got '0.17 ms'"]),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_finding_lists_every_problem(name, recorded):
    finding, problems = MALFORMED[name]
    with pytest.raises(ExerciseFailed) as failure:
        check_finding(name, finding)
    message = str(failure.value)
    assert f"{len(problems)} problem(s)" in message, message
    for problem in problems:
        assert problem in message, f"{problem!r} not in {message}"
    assert "Fix `finding = ...`" in message and recorded[-1].passed is False


INCONSISTENT = [
    ("adapter_bottleneck", {"accuracy": [0.97, 0.95]}, "accuracy has 2 values for 3 reduction factors"),
    ("adapter_swap_time", {"swap_ms": [1.1, 1.2]}, "swap_ms has 2 values for 3 ranks"),
    ("adapter_swap_time", {"ranks": [2, 8, 8]}, r"ranks \[2, 8, 8\] repeat a rank"),
    ("quant_block_size", {"errors": [0.0065, 0.0085, 0.012]}, "errors has 3 values for 4 block sizes"),
    ("quant_block_size", {"blocksizes": [16, 64, 1000, 1000]},
     r"blocksizes \[16, 64, 1000, 1000\] repeat a block size"),
    ("quant_block_size", {"bits_per_weight": [6.0, 4.25, 4.032, 4.0]},   # 4.25: neither 4.5 nor 4.127
     r"bits_per_weight \[4.25\] for blocksizes \[64\] match neither 4 \+ 32 / blocksize"),
    ("soft_prompt_drift", {"still_nearest": [0.69, 0.5, 0]}, r"still_nearest \[0.5\] cannot be shares of 29"),
    ("soft_prompt_drift", {"still_nearest": [0.69, 0.0]}, "still_nearest has 2 values for 3 learning rates"),
    ("soft_prompt_drift", {"learning_rates": [0.3, 0.3, 3]},
     r"learning_rates \[0.3, 0.3, 3\] repeat a learning rate"),
    ("rag_passages", {"exact_match": [0.45, 0.98, 0.99, 0.99]},
     "exact_match has 4 values for 3 numbers of passages"),
    ("rag_passages", {"passages": [1, 2, 2]}, r"passages \[1, 2, 2\] repeat a number of passages"),
    ("rag_passages", {"answer_retrieved": [0.5, 1.0, 0.9]}, r"answer_retrieved falls at passages \[8\]"),
    ("claim_at_scale", {"claim": "peft-share"}, "claim 'peft-share' is not one of the ledger's claim ids: "
                                                "use one of ffn-two-thirds, "),
    ("claim_at_scale", {"values": [8.5, 0.3, 0.2, 0.15]}, "values has 4 values for 3 models"),
    ("claim_at_scale", {"parameters_billions": [6.7, 6.7, 65.3]},
     r"parameters_billions \[6.7, 6.7, 65.3\] repeat a model size"),
    ("generation_latency", {"milliseconds": [2.9, 8.6, 20.0, 44.0]},
     "milliseconds has 4 values for 3 answer lengths"),
    ("generation_latency", {"new_tokens": [8, 8, 256]}, r"new_tokens \[8, 8, 256\] repeat an answer length"),
    ("generation_latency", {"ms_per_token": 170.0},         # microseconds given as milliseconds
     r"ms_per_token 170.0 times 256 tokens is more than the 44.0 ms that answer took"),
]


@pytest.mark.parametrize("name, change, problem", INCONSISTENT)
def test_each_consistency_check_names_what_it_caught(name, change, problem, recorded):
    with pytest.raises(ExerciseFailed, match=f"{name}: 1 problem\\(s\\) with your finding:\n  - {problem}"):
        check_finding(name, {**RIGHT[name], **change})
