"""Evaluation: task metrics per item, and a bootstrap confidence interval for any of them.

Per-item scores (exact match, ROUGE-L) are kept rather than only their mean, because a
difference between two models is only a finding when its interval excludes zero: pair the items
(`bootstrap_ci(after - before)`) and look at the interval, never at a single number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

TASK_METRICS = {"describe": "rouge_l"}  # every other task is scored by exact match


# ---------------------------------------------------------------- metrics

def normalize(text: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding punctuation: "Pelmora." == "pelmora"."""
    return " ".join(text.lower().split()).strip(" .!?,;:'\"")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """1.0 where the normalised prediction equals the normalised reference, else 0.0."""
    _same_length(predictions, references)
    return np.array([float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)])


def mentions_answer(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """1.0 where the reference appears as whole words in the prediction ("... lives in Pelmora"
    mentions "Pelmora"): correctness for answers given in a sentence rather than a word."""
    _same_length(predictions, references)
    return np.array([float(f" {normalize(r)} " in f" {_rouge_tokens_joined(p)} ")
                     for p, r in zip(predictions, references)])


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exact (normalised) matches."""
    return float(exact_match(predictions, references).mean())


def macro_f1(predictions: Sequence[str], references: Sequence[str],
             labels: Sequence[str] | None = None) -> float:
    """Unweighted mean over labels of F1 = 2TP / (2TP + FP + FN); a prediction outside the
    labels counts as a miss of its reference label."""
    _same_length(predictions, references)
    predictions = [normalize(p) for p in predictions]
    references = [normalize(r) for r in references]
    labels = sorted({normalize(label) for label in labels} if labels else set(references))
    scores = []
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def _rouge_tokens(text: str) -> list[str]:
    # As rouge-score's default tokenizer: lower-case, anything but letters and digits splits.
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _rouge_tokens_joined(text: str) -> str:
    return " ".join(_rouge_tokens(text))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 per item: the longest common subsequence of words, as recall and precision."""
    _same_length(predictions, references)
    scores = []
    for prediction, reference in zip(predictions, references):
        p, r = _rouge_tokens(prediction), _rouge_tokens(reference)
        lcs = _lcs_length(p, r)
        scores.append(0.0 if lcs == 0 else 2 * lcs / (len(p) + len(r)))
    return np.array(scores)


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], np.ndarray]] = {
    "exact_match": exact_match, "rouge_l": rouge_l, "mentions_answer": mentions_answer}


@torch.no_grad()
def perplexity(model: nn.Module, examples: Sequence[dict[str, list[int]]], batch_size: int = 32,
               pad_id: int | None = None) -> float:
    """exp(mean next-token loss) over the labelled tokens of tokenized examples."""
    from ftcourse.train import causal_lm_loss, pad_batch

    pad_id = model.config.pad_token_id if pad_id is None else pad_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = pad_batch(examples[start:start + batch_size], pad_id)
        loss_sum, n = causal_lm_loss(model, {k: v.to(device) for k, v in batch.items()})
        total, count = total + loss_sum.item(), count + int(n)
    model.train(was_training)
    return math.exp(total / count)


def _same_length(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references; "
                         "they must pair up one to one.")


# ---------------------------------------------------------------- confidence intervals

@dataclass(frozen=True)
class CI:
    """A point estimate with a (1 - alpha) confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_ci(scores: Sequence[float] | np.ndarray, *,
                 statistic: Callable[[np.ndarray], float] | None = None, n_resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap interval of `statistic` (default: the mean) over items.

    Args:
        scores: one value per item (or one row per item for a custom statistic). For the gain of
            model B over model A on the same items, pass the paired differences B - A.
        statistic: maps a resample of `scores` to a number, e.g. a macro-F1 over indices.
    """
    values = np.asarray(scores, dtype=float if statistic is None else None)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one score.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(values), size=(n_resamples, len(values)))
    if statistic is None:
        estimate, stats = float(values.mean()), values[resamples].mean(axis=1)
    else:
        estimate = float(statistic(values))
        stats = np.array([statistic(values[idx]) for idx in resamples])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return CI(estimate, float(low), float(high), confidence)


# ---------------------------------------------------------------- scoring a model on a task

@dataclass
class TaskScore:
    """A model's answers on a task, their per-item scores and the mean's confidence interval."""

    predictions: list[str]
    scores: np.ndarray
    ci: CI
    metric: str


def score_task(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]], *,
               metric: str | None = None, max_new_tokens: int = 48, batch_size: int = 64,
               seed: int = 0) -> TaskScore:
    """Greedy answers to each row's `instruction`, scored against its `response`."""
    from ftcourse.generate import generate

    metric = metric or TASK_METRICS.get(rows[0].get("task", ""), "exact_match")
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; known: {', '.join(METRICS)}.")
    instructions = [row["instruction"] for row in rows]
    predictions = generate(model, tokenizer, instructions, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    scores = METRICS[metric](predictions, [row["response"] for row in rows])
    return TaskScore(predictions, scores, bootstrap_ci(scores, seed=seed), metric)


def recall_accuracy(model: nn.Module, tokenizer: Any, probes: Sequence[tuple[str, str]],
                    batch_size: int = 64) -> np.ndarray:
    """1.0 where the greedy continuation of a probe's prefix starts with its value."""
    from ftcourse.generate import generate

    prefixes = [prefix for prefix, _ in probes]
    continuations = generate(model, tokenizer, prefixes, chat=False, max_new_tokens=6,
                             batch_size=batch_size)
    return np.array([float(text.split(" ")[0].strip(".,") == value.split(" ")[0])
                     for text, (_, value) in zip(continuations, probes)])
