"""Exercises for the quickstart: score answers by exact match, count what a method trains;
predict the width of a bootstrap interval; an open experiment on what the base model knows.

The oracles are the package's own `ftcourse.evaluate.exact_match` (the metric every chapter
reports) and `ftcourse.methods.count_trainable` (the table `load_base` is shown with). The
prediction is measured with `ftcourse.evaluate.bootstrap_ci`, the experiment with `recall_accuracy`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ftcourse.evaluate import exact_match
from ftcourse.exercises.core import ExerciseFailed, exercise, expect_equal, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, predict
from ftcourse.methods import count_trainable


def is_exact_match(prediction: str, reference: str) -> bool:
    """True when the two answers are equal after normalisation, as the book scores answers.

    Normalising forgives what does not change the answer: case, runs of whitespace and the
    punctuation around it ("Pelmora." is "pelmora"), but nothing inside it.
    """
    def normalise(text: str) -> str:
        text = " ".join(text.lower().split())       # lower-case, one space between words
        return text.strip(" .!?,;:'\"")              # drop punctuation at either end
    return normalise(prediction) == normalise(reference)


# (prediction, reference, what an answer that gets this case wrong has probably missed)
EXACT_MATCH_CASES = [
    ("Pelmora", "Pelmora", "identical answers must match."),
    ("pelmora", "Pelmora", "lower-case both texts before comparing: case does not change the answer."),
    ("  Pelmora\n", "Pelmora", "strip the whitespace around the answer (str.split() then ' '.join)."),
    ("lives in   Pelmora", "lives in Pelmora",
     "collapse runs of whitespace inside the answer into single spaces."),
    ("Pelmora.", "Pelmora", "drop the punctuation .!?,;:'\" at both ends of the answer."),
    ('"Blue!"', "blue", "drop the punctuation .!?,;:'\" at both ends of the answer."),
    ("Pelmora City", "Pelmora",
     "an answer that merely contains the reference is not an exact match: compare whole strings."),
    ("Pel-mora", "Pelmora",
     "only punctuation at the ends is dropped; a character inside the answer changes it."),
]


@exercise(chapter="00_quickstart", solution=is_exact_match,
          task="Return True when prediction and reference are equal after lower-casing, collapsing "
               "whitespace and stripping the punctuation .!?,;:'\" (and spaces) at both ends.")
def check_is_exact_match(answer: Callable[[str, str], bool]) -> None:
    """Hand-picked pairs, one per rule of the normalisation, scored by `exact_match`."""
    for prediction, reference, hint in EXACT_MATCH_CASES:
        want = bool(exact_match([prediction], [reference])[0])
        got = answer(prediction, reference)
        if got not in (True, False):
            raise ExerciseFailed(f"is_exact_match({prediction!r}, {reference!r}): return True or "
                                 f"False, got {type(got).__name__}.")
        expect_equal(bool(got), want, f"is_exact_match({prediction!r}, {reference!r})", hint)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters of `model`, each shared tensor counted once.

    A fine-tuning method decides what trains by setting `requires_grad`; this says how much.
    """
    parameters = list(model.parameters())          # a shared (tied) tensor appears once here
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    return trainable, total


class _TiedModel(nn.Module):
    """A small language-model shape: tied embedding and head, a norm with a buffer, a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(50, 8)
        self.layer = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 50, bias=False)
        self.lm_head.weight = self.embed_tokens.weight          # tied: one tensor, two uses
        self.register_buffer("positions", torch.arange(64))     # a buffer is not a parameter
        self.layer.requires_grad_(False)


def _models() -> dict[str, nn.Module]:
    """Models to count, named for the message: a frozen part, tied weights, a buffer."""
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    mlp[0].requires_grad_(False)
    return {"an MLP whose first layer is frozen": mlp, "a model with tied embeddings": _TiedModel(),
            "a fully frozen model": nn.Linear(5, 7).requires_grad_(False)}


@exercise(chapter="00_quickstart", solution=parameter_counts,
          task="Return (trainable, total): how many numbers in the model's parameters train "
               "(requires_grad) and how many there are, each shared tensor counted once.")
def check_parameter_counts(answer: Callable[[nn.Module], tuple[int, int]]) -> None:
    """Compare with `count_trainable` on models with frozen, tied and buffered parts."""
    for description, model in _models().items():
        counts = count_trainable(model)
        parameters = list(model.parameters())
        got = answer(model)
        what = f"parameter_counts on {description}"
        if not (isinstance(got, tuple) and len(got) == 2):
            raise ExerciseFailed(f"{what}: return a tuple (trainable, total), got {got!r}.")
        expect_number(got[0], counts["trainable"], f"{what}, trainable", rel=0, hints={
            "you counted every parameter: keep only those with p.requires_grad.": counts["total"],
            "you counted tensors, not the numbers in them: add up p.numel().":
                sum(p.requires_grad for p in parameters)})
        state = model.state_dict()
        expect_number(got[1], counts["total"], f"{what}, total", rel=0, hints={
            "you counted tensors, not the numbers in them: add up p.numel().": len(parameters),
            "you counted the state_dict: it also holds buffers and lists a tied weight under each "
            "of its names; use model.parameters().": sum(t.numel() for t in state.values()),
            "you counted only the trainable parameters: the total includes frozen ones.":
                counts["trainable"]})


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("bootstrap_interval_width", chapter="00_quickstart",
        question="A model answers 50 of 100 test questions right. How wide is the 95% bootstrap interval "
                 "of its exact match (high minus low), in percentage points?",
        form=Number(rel=0.25, low=0, high=100, unit="points"))


def _shares_of_whole_people(finding: dict) -> str | None:
    # A share measured on n people is (right answers) / n; rounding to 2 decimals is forgiven.
    people = finding["people"]
    shares = finding["recall_pretraining_wordings"] + finding["recall_new_wordings"]
    odd = [share for share in shares if abs(share * people - round(share * people)) > 0.005 * people + 1e-9]
    return (f"recall {odd} cannot be measured on {people} people: give each as (people whose city the "
            "model completes) / people") if odd else None


experiment("fact_or_sentence", chapter="00_quickstart",
           question="Does the base model know a fact, or only the sentences it read? Complete where each of "
                    "the same people lives in wordings the pretraining text used and in new ones, measure "
                    "the share of people whose city the base model completes for each wording, and say what "
                    "decides whether it does.",
           fields={"people": Field(int, low=10),
                   "recall_pretraining_wordings": Field(list, item=float, low=0, high=1, min_len=1),
                   "recall_new_wordings": Field(list, item=float, low=0, high=1, min_len=2),
                   "conclusion": Field(str, min_len=40)},
           checks=(_shares_of_whole_people,))
