"""LLM-as-judge: pairwise verdicts from a judge model's log-probabilities, judged in both orders.

A judge model reads a question, two answers (and, if given, a reference answer), then "Better
answer:"; its verdict is the label, "A" or "B", with the higher next-token log-probability. That
is deterministic and cannot fail to parse: there is no text to read a verdict from, only two
numbers. Judges prefer a position (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and
Chatbot Arena", arXiv:2306.05685), so every pair is judged as (x, y) and as (y, x) and a verdict
stands only when the same answer wins both times; otherwise it is a tie.
Agreement between two raters (judge and human, or two humans) is Cohen's kappa; library twin:
sklearn.metrics.cohen_kappa_score, equal in tests/test_judge.py.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ftcourse.batching import (
    at_least_float32,
    batches,
    evaluating,
    model_inputs,
    pad_batch,
    require_within_positions,
)
from ftcourse.chat import prompt_ids, tokenize_example
from ftcourse.evaluate.stats import CI, bootstrap_ci

LABELS = ("A", "B")
TEMPLATE = ("Which answer to the question is better? Reply A or B.\nQuestion: {question}\n{reference}"
            "Answer A: {first}\nAnswer B: {second}\nBetter answer:")
REFERENCE = "Reference answer: {reference}\n"


def judge_prompt(question: str, first: str, second: str, reference: str | None = None,
                 template: str = TEMPLATE) -> str:
    """The judging prompt: `template` with the question, the reference line (empty without a
    reference) and answers A and B; the label is the next token after it."""
    shown = "" if reference is None else REFERENCE.format(reference=reference)
    return template.format(question=question, reference=shown, first=first, second=second)


def label_tokens(tokenizer: Any, prompt: str, labels: tuple[str, str] = LABELS, *,
                 chat: bool = False) -> tuple[list[int], int, int]:
    """(tokens both labels start with, first label's token, second's) after `prompt`: the verdict
    compares the two tokens after the shared ones ([] for " A", [" "] where a tokenizer splits it)."""
    if chat:
        start = prompt_ids(tokenizer, prompt)
        full = [tokenize_example(tokenizer, prompt, label)["input_ids"] for label in labels]
    else:
        start = tokenizer(prompt)["input_ids"]
        full = [tokenizer(f"{prompt} {label}")["input_ids"] for label in labels]
    differ = [i for i in range(min(map(len, full))) if full[0][i] != full[1][i]]
    if (len(full[0]) != len(full[1]) or len(differ) != 1 or differ[0] < len(start)
            or any(ids[:len(start)] != start for ids in full)):
        pieces = {label: [tokenizer.decode([token]) for token in ids[len(start):]]
                  for label, ids in zip(labels, full)}
        raise ValueError(f"The judge's labels {list(labels)} must differ in exactly one token after the "
                         f"prompt, the token a verdict compares; this tokenizer continues the prompt with "
                         f"{pieces}. Pick two labels it encodes as single tokens (single letters or digits "
                         "usually are) and pass them as labels=(...).")
    at = differ[0]
    return full[0][len(start):at], full[0][at], full[1][at]


def judge_margins(judge: nn.Module, tokenizer: Any, questions: Sequence[str], firsts: Sequence[str],
                  seconds: Sequence[str], references: Sequence[str] | None = None, *,
                  labels: tuple[str, str] = LABELS, template: str = TEMPLATE, chat: bool = False,
                  batch_size: int = 32) -> np.ndarray:
    """log p(first label) - log p(second label) per item (n,), after each judging prompt: > 0 is a
    verdict for the answer shown first (A), otherwise (0 included) for the second (B).

    Args:
        judge: a causal LM; `chat=True` wraps each prompt in the tokenizer's chat template (an
            instruct or fine-tuned judge), False reads it as raw text (a base model).
        references: a reference answer per item, shown to the judge, or None.
        template: the prompt, e.g. with a rubric: {question}, {first}, {second} and, to show
            references, {reference}; it ends where the label follows ("Better answer:").
    """
    _check_lists(questions=questions, firsts=firsts, seconds=seconds, references=references)
    fields = ["{question}", "{first}", "{second}"] + ([] if references is None else ["{reference}"])
    if missing := [field for field in fields if field not in template]:
        raise ValueError(f"The judge's template lacks {missing}; it needs {', '.join(fields)}. "
                         "Start from ftcourse.evaluate.judge.TEMPLATE.")
    prompts = [judge_prompt(q, a, b, None if references is None else references[i], template)
               for i, (q, a, b) in enumerate(zip(questions, firsts, seconds))]
    shared, first_id, second_id = label_tokens(tokenizer, prompts[0], labels, chat=chat)
    encoded = [{"input_ids": [*(prompt_ids(tokenizer, p) if chat else tokenizer(p)["input_ids"]), *shared]}
               for p in prompts]
    require_within_positions(judge, encoded)
    # Right padding: under the causal mask no real token sees the padding after it, so each row's
    # last real token has the logits it has alone (tested: batched equals one at a time), and the
    # padding's id never matters (many instruct tokenizers have none).
    collate = partial(pad_batch, pad_id=tokenizer.pad_token_id or 0)
    margins = []
    with evaluating(judge):
        for batch in batches(judge, encoded, batch_size, collate):
            logits = judge(**model_inputs(batch)).logits                        # (B, T, V)
            last = batch["attention_mask"].sum(dim=1) - 1                         # (B,)
            logprobs = torch.log_softmax(at_least_float32(logits[torch.arange(len(last)), last]), dim=-1)
            margins.append((logprobs[:, first_id] - logprobs[:, second_id]).double().cpu())
    return torch.cat(margins).numpy()


@dataclass(frozen=True)
class PairwiseJudgments:
    """Each pair (x, y) judged twice, x shown first and then y shown first."""

    margins: np.ndarray    # (n, 2): log p(A) - log p(B) with x first (column 0), y first (column 1)

    @property
    def x_wins(self) -> np.ndarray:
        """(n, 2) booleans: the judge picked x, in each order (x is A first, then B)."""
        return np.stack([self.margins[:, 0] > 0, self.margins[:, 1] <= 0], axis=1)

    @property
    def position_bias(self) -> float:
        """Share of all 2n judgments that went to the answer shown first; 0.5 is unbiased."""
        return float((self.margins > 0).mean())

    @property
    def consistency(self) -> float:
        """Share of pairs where the same answer wins in both orders."""
        return float((self.x_wins[:, 0] == self.x_wins[:, 1]).mean())

    @property
    def verdicts(self) -> np.ndarray:
        """Per pair: "x" or "y" where both orders agree, "tie" where they do not."""
        wins = self.x_wins
        return np.where(wins[:, 0] != wins[:, 1], "tie", np.where(wins[:, 0], "x", "y"))


def judge_both_orders(judge: nn.Module, tokenizer: Any, questions: Sequence[str], xs: Sequence[str],
                      ys: Sequence[str], references: Sequence[str] | None = None,
                      **options: Any) -> PairwiseJudgments:
    """Judge each pair as (x, y) and as (y, x); options go to `judge_margins` (labels, template,
    chat, batch_size)."""
    _check_lists(questions=questions, xs=xs, ys=ys, references=references)
    n = len(questions)
    both = judge_margins(judge, tokenizer, [*questions, *questions], [*xs, *ys], [*ys, *xs],
                         None if references is None else [*references, *references], **options)
    return PairwiseJudgments(np.stack([both[:n], both[n:]], axis=1))


@dataclass(frozen=True)
class LabelAgreement:
    """How often the judge picks the right answer, on pairs where exactly one answer is right."""

    picks_right: CI     # per pair 1 (picked), 1/2 (tie) or 0 (the wrong one): chance is 0.5
    pairs: int          # pairs with exactly one right answer; the others carry no label
    ties: int

    def __str__(self) -> str:
        return f"picks the right answer {self.picks_right} on {self.pairs} pairs ({self.ties} ties)"


def agreement_with_labels(judgments: PairwiseJudgments, x_right: Sequence[float],
                          y_right: Sequence[float], *, seed: int = 0) -> LabelAgreement:
    """How often the final verdicts pick the answer a 0/1 label (exact match) says is right, on the
    pairs with exactly one right answer; a tie counts 1/2: the mean of both orders' judgments."""
    x_right, y_right = np.asarray(x_right, dtype=float), np.asarray(y_right, dtype=float)
    _check_lists(judgments=judgments.margins, x_right=x_right, y_right=y_right)
    if not (np.isin(x_right, (0, 1)).all() and np.isin(y_right, (0, 1)).all()):
        raise ValueError("x_right and y_right must be 0/1 labels per pair (exact match scores).")
    labelled = x_right != y_right
    if not labelled.any():
        raise ValueError(f"None of the {len(x_right)} pairs has exactly one right answer, so the labels say "
                         "nothing about which answer is better. Pair a right answer with a wrong one.")
    verdicts, right = judgments.verdicts[labelled], np.where(x_right[labelled] == 1, "x", "y")
    scores = np.where(verdicts == "tie", 0.5, (verdicts == right).astype(float))
    ties = int((verdicts == "tie").sum())
    return LabelAgreement(bootstrap_ci(scores, seed=seed), int(labelled.sum()), ties)


def cohen_kappa(rater_1: Sequence[Hashable], rater_2: Sequence[Hashable]) -> float:
    """Cohen's kappa (p_o - p_e) / (1 - p_e): observed agreement p_o beyond the p_e expected from each
    rater's label shares; 1 perfect, 0 chance, nan where p_e = 1 (one label throughout), as sklearn."""
    _check_lists(rater_1=rater_1, rater_2=rater_2)
    first, second = np.asarray(rater_1, dtype=object), np.asarray(rater_2, dtype=object)
    observed = float(np.mean(first == second))
    categories = set(first.tolist()) | set(second.tolist())
    expected = sum(float(np.mean(first == c)) * float(np.mean(second == c)) for c in categories)
    return float("nan") if expected == 1 else (observed - expected) / (1 - expected)


def _check_lists(**lists: Sequence[Any] | None) -> None:
    """Raise ValueError, naming them, if any list is empty or the lists differ in length (None, an
    optional list not given, is left out)."""
    lengths = {name: len(values) for name, values in lists.items() if values is not None}
    problems = [f"{name} is empty" for name, length in lengths.items() if length == 0]
    if len(set(lengths.values())) > 1:
        problems.append("the lengths differ (" + ", ".join(f"{k}: {v}" for k, v in lengths.items()) + ")")
    if problems:
        raise ValueError(f"Judging needs one entry per item in each list: {'; '.join(problems)}. "
                         "Pass lists of equal, non-zero length.")
