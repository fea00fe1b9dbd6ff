"""ftcourse.evaluate against EleutherAI's lm-evaluation-harness, on the same items, offline.

Equality rule: generated answers are greedy token for token, so they and their exact-match scores
must be equal item by item. A choice's log-likelihood is a sum over its tokens of log-softmaxed
logits, within the tolerance rule over `loss_path`; the picked choices, so acc and acc_norm per
item, must then be equal.
"""

import copy

import numpy as np
import pytest
import torch

from ftcourse.data import as_multiple_choice, load_task
from ftcourse.evaluate import choice_logprobs, continuation_example, exact_match, score_choices, score_task
from ftcourse.evaluate.harness import (
    EXACT_MATCH,
    harness_command,
    run_harness,
    write_choice_task,
    write_generation_task,
)
from ftcourse.lora import LoRA
from ftcourse.sft import finetune
from ftcourse.tolerance import assert_close, loss_path
from ftcourse.train import TrainConfig

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def qa():
    return load_task("qa")


@pytest.fixture(scope="module")
def fine_tuned(base, qa):
    """The tiny model after two epochs of LoRA on qa: it answers most questions, not all."""
    lora = LoRA(r=8, alpha=16, targets="all-linear")
    model, _ = finetune(copy.deepcopy(base[0]), base[1], qa["train"], lora,
                        TrainConfig(epochs=2, lr=1e-2, batch_size=16, seed=0), progress=False)
    return model


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, qa):
    folder = tmp_path_factory.mktemp("harness")
    test = list(qa["test"])
    write_generation_task(folder, "ftcourse_qa", test)
    write_choice_task(folder, "ftcourse_qa_mc", as_multiple_choice(test, seed=0))
    return folder, test, as_multiple_choice(test, seed=0)


@pytest.mark.equivalence
def test_generated_answers_and_exact_match_equal_the_harness(fine_tuned, tokenizer, tasks):
    folder, test, _ = tasks
    ours = score_task(fine_tuned, tokenizer, test)
    theirs = run_harness(fine_tuned, tokenizer, folder, ["ftcourse_qa"], chat=True)["ftcourse_qa"]
    assert [sample["doc"]["instruction"] for sample in theirs] == [row["instruction"] for row in test]
    assert [sample["filtered_resps"][0].strip() for sample in theirs] == ours.predictions
    assert [sample["exact_match"] for sample in theirs] == ours.scores.tolist()
    assert 0.2 < ours.ci.estimate < 1.0, "some right and some wrong, or the comparison proves little"


@pytest.mark.equivalence
@pytest.mark.parametrize("which", ["base", "fine-tuned"])
def test_choice_loglikelihoods_and_accuracy_equal_the_harness(which, base, fine_tuned, tokenizer, tasks):
    folder, _, items = tasks
    model = base[0] if which == "base" else fine_tuned
    theirs = run_harness(model, tokenizer, folder, ["ftcourse_qa_mc"])["ftcourse_qa_mc"]
    their_logprobs = np.concatenate([[response[0][0] for response in sample["resps"]] for sample in theirs])
    ours = np.concatenate(choice_logprobs(model, tokenizer, items))
    longest = max(len(continuation_example(tokenizer, item["context"], " " + choice)["input_ids"])
                  for item in items for choice in item["choices"])
    assert_close(torch.tensor(ours), torch.tensor(their_logprobs), dtype=torch.float32,
                 n=loss_path(model.config, longest, longest))
    for per_character, metric in [(False, "acc"), (True, "acc_norm")]:
        scored = score_choices(model, tokenizer, items, per_character=per_character)
        assert [sample[metric] for sample in theirs] == scored.scores.tolist(), metric


def test_continuations_split_as_the_harness_splits_them(base, tokenizer):
    from lm_eval.models.huggingface import HFLM

    harness = HFLM(pretrained=base[0], tokenizer=tokenizer, batch_size=1)
    for context, continuation in [("Question: Where does Ana Bel live?\nAnswer:", " Pelmora"),
                                  ("Kalo Torsel lives in ", "Quistar."), ("2 + 2 =", " 4")]:
        ours = continuation_example(tokenizer, context, continuation)
        start = ours["labels"].count(-100)
        assert (ours["input_ids"][:start], ours["input_ids"][start:]) == \
            tuple(harness._encode_pair(context, continuation))


def test_exact_match_config_compares_as_normalize_does():
    from lm_eval.api.metrics import exact_match_hf_evaluate

    options = {key: value for key, value in EXACT_MATCH.items()
               if key not in ("metric", "aggregation", "higher_is_better")}
    pairs = [(" Pelmora.", "Pelmora"), ("PILOT", "pilot"), ("'cat'!", "cat"), ("cat s", "cats"),
             ("pilot, baker", "pilot"), ("\n\tgrey ", "grey"), ("Mire field", "Mirefield"), ("", "cat")]
    ours = exact_match([p for p, _ in pairs], [r for _, r in pairs])
    theirs = [exact_match_hf_evaluate([p], [r], **options)["exact_match"] for p, r in pairs]
    assert ours.tolist() == theirs
    assert 0 < ours.sum() < len(pairs)
    # The one difference, stated in harness.py: normalize also collapses inner runs of whitespace.
    assert exact_match(["New  York"], ["New York"])[0] == 1.0
    assert exact_match_hf_evaluate(["New  York"], ["New York"], **options)["exact_match"] == 0.0


def test_multiple_choice_rows_hold_the_answer_and_others_of_its_kind(qa):
    rows = list(qa["test"])
    items = as_multiple_choice(rows, n_choices=4, seed=3)
    assert items == as_multiple_choice(rows, n_choices=4, seed=3)
    positions = [item["answer"] for item in items]
    assert len(set(positions)) == 4, "the right answer is not always in the same place"
    for row, item in zip(rows, items):
        assert item["choices"][item["answer"]] == row["response"]
        assert len(set(item["choices"])) == 4
        assert item["context"].startswith("Question: ") and row["instruction"] in item["context"]
    cities = {"Pelmora", "Quistar", "Drovenhal", "Axbury", "Lunett", "Korvanis", "Tessaly", "Brimholt",
              "Varnok", "Zellin", "Mirefield", "Castova"}
    for item in items:
        if item["choices"][item["answer"]] in cities:
            assert set(item["choices"]) <= cities


def test_bad_inputs_are_named(tmp_path, base, tokenizer):
    with pytest.raises(ValueError, match="no 'choices' field"):
        write_choice_task(tmp_path, "t", [{"context": "Q", "answer": 0}])
    with pytest.raises(ValueError, match="has no rows"):
        write_generation_task(tmp_path, "t", [])
    with pytest.raises(ValueError, match="No task file missing.yaml"):
        run_harness(base[0], tokenizer, tmp_path, ["missing"])
    with pytest.raises(ValueError, match="n_choices must be >= 2"):
        as_multiple_choice([{"instruction": "q", "response": "a"}], n_choices=1)
    with pytest.raises(ValueError, match="too few for 4 choices"):
        as_multiple_choice([{"instruction": "q", "response": "a"}, {"instruction": "r", "response": "b"}])
    with pytest.raises(ValueError, match="context is empty"):
        continuation_example(tokenizer, "  ", " Pelmora")
    with pytest.raises(ValueError, match="no 'context' or no 'choices'"):
        choice_logprobs(base[0], tokenizer, [{"question": "q", "choices": ["a"]}])


def test_harness_command_for_a_real_model():
    command = harness_command("HuggingFaceTB/SmolLM2-360M", ["arc_easy", "hellaswag"], adapter="runs/qa")
    assert command.startswith("lm_eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-360M,")
    assert ",peft=runs/qa " in command and "--tasks arc_easy,hellaswag " in command
    assert "--apply_chat_template" not in command
    assert harness_command("m", ["t"], chat=True).endswith(" --apply_chat_template")
