"""Task metrics, one score per item: exact match, "mentions the answer", ROUGE-L, macro-F1.

Scores are kept per item rather than only as a mean, because a difference between two models is a
finding only when its interval excludes zero (`ftcourse.evaluate.stats`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Open-ended answers are scored by ROUGE-L; every other task by exact match.
TASK_METRICS = {"describe": "rouge_l", "alpaca": "rouge_l"}


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
    return np.array([float(f" {normalize(r)} " in f" {_words_joined(p)} ")
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


def words(text: str) -> list[str]:
    """Lower-cased words; anything but letters and digits splits (rouge-score's tokenizer)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _words_joined(text: str) -> str:
    return " ".join(words(text))


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
        p, r = words(prediction), words(reference)
        lcs = _lcs_length(p, r)
        scores.append(0.0 if lcs == 0 else 2 * lcs / (len(p) + len(r)))
    return np.array(scores)


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], np.ndarray]] = {
    "exact_match": exact_match, "rouge_l": rouge_l, "mentions_answer": mentions_answer}


def _same_length(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} references; "
                         "they must pair up one to one.")
