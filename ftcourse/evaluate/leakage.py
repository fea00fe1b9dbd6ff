"""Contamination: test items whose word n-grams already appear in the training data.

A flagged item measures memory, not generalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ftcourse.evaluate.metrics import words


@dataclass(frozen=True)
class Contamination:
    """How much of each test item already appears in the training data, as shared n-grams."""

    overlap: np.ndarray    # per test item: share of its n-grams found in the training texts
    flagged: list[int]     # test items at or above the threshold
    n: int
    threshold: float

    def __str__(self) -> str:
        return (f"{len(self.flagged)} of {len(self.overlap)} test items share >= {self.threshold:.0%} of "
                f"their {self.n}-grams with the training data")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of a text (none if it is shorter than n words)."""
    tokens = words(text)
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def contamination(train_texts: Sequence[str], test_texts: Sequence[str], n: int = 8,
                  threshold: float = 0.5) -> Contamination:
    """Flag test items whose word n-grams appear in the training texts (GPT-3's check used n = 13;
    our questions are short, so 8). A test item shorter than n words counts as seen if its whole
    word sequence occurs in a training text. A flagged item measures memory, not generalisation."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    seen = set().union(*(ngrams(text, n) for text in train_texts))
    corpus = "\n".join(f" {' '.join(words(text))} " for text in train_texts)
    overlap = []
    for text in test_texts:
        tokens = words(text)
        if len(tokens) < n:
            overlap.append(float(bool(tokens) and f" {' '.join(tokens)} " in corpus))
        else:
            grams = ngrams(text, n)
            overlap.append(len(grams & seen) / len(grams))
    overlap = np.array(overlap)
    return Contamination(overlap, [int(i) for i in np.flatnonzero(overlap >= threshold)], n, threshold)
