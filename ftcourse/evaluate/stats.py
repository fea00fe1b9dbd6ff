"""Uncertainty: bootstrap confidence intervals, and paired tests of two models on the same items.

For the gain of model B over model A, pair the items (`bootstrap_ci(b - a)`) and look at the
interval, never at a single number; `paired_comparison` adds a p-value (McNemar's exact test for
0/1 scores, else a paired bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class Comparison:
    """Model B against model A on the same items: the mean difference B - A with its interval,
    a two-sided p-value for "no difference", and the items each got right that the other did not."""

    difference: CI
    p_value: float
    test: str              # "McNemar (exact)" for 0/1 scores, else "paired bootstrap"
    b_only: int            # items B scored higher on
    a_only: int            # items A scored higher on

    def __str__(self) -> str:
        return f"B - A = {self.difference} ({self.test}, p = {self.p_value:.3g})"


def paired_comparison(scores_a: Sequence[float] | np.ndarray, scores_b: Sequence[float] | np.ndarray, *,
                      n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Compare two models scored on the same items, pairing each item with itself.

    For 0/1 scores, McNemar's exact test: only items where the models disagree carry evidence,
    and under "no difference" each such item is a fair coin (binomial, two-sided). Otherwise a
    paired bootstrap test: resample the per-item differences recentred on zero (the null) and
    count resamples at least as far from zero as the observed mean.
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Paired scores must be two 1-D arrays over the same items; got shapes "
                         f"{a.shape} and {b.shape}.")
    differences = b - a
    interval = bootstrap_ci(differences, n_resamples=n_resamples, confidence=confidence, seed=seed)
    b_only, a_only = int((differences > 0).sum()), int((differences < 0).sum())
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        discordant = b_only + a_only
        tail = sum(math.comb(discordant, k) for k in range(min(b_only, a_only) + 1)) / 2 ** discordant
        return Comparison(interval, min(1.0, 2 * tail), "McNemar (exact)", b_only, a_only)
    rng = np.random.default_rng(seed)
    centred = differences - differences.mean()
    resampled = centred[rng.integers(0, len(centred), size=(n_resamples, len(centred)))].mean(axis=1)
    p_value = (np.sum(np.abs(resampled) >= abs(differences.mean())) + 1) / (n_resamples + 1)
    return Comparison(interval, float(p_value), "paired bootstrap", b_only, a_only)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of m p-values (Holm 1979), in their given order.

    Testing m hypotheses at level alpha each, some will pass by luck; Holm keeps the chance of any
    false claim in the family at most alpha. Sorted ascending, the i-th smallest p (from 1) is
    multiplied by m - i + 1, and each adjusted value is at least the one before it, at most 1:
    reject where the adjusted p <= alpha. Library twin: statsmodels' multipletests(method="holm").
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1)).any():
        raise ValueError(f"holm needs a 1-D list of p-values in [0, 1], got {p_values!r}.")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))          # m, m - 1, ..., 1
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
