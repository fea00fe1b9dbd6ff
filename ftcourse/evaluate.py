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
from pathlib import Path
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


def perplexity(model: nn.Module, examples: Sequence[dict[str, list[int]]], batch_size: int = 32,
               pad_id: int | None = None) -> float:
    """exp(mean next-token loss) over the labelled tokens of tokenized examples."""
    losses = example_losses(model, examples, batch_size, pad_id)
    return math.exp(losses[:, 0].sum() / losses[:, 1].sum())


@torch.no_grad()
def example_losses(model: nn.Module, examples: Sequence[dict[str, list[int]]], batch_size: int = 32,
                   pad_id: int | None = None) -> np.ndarray:
    """(summed next-token loss, labelled tokens) per example, shape (n, 2): the items that a
    perplexity's confidence interval resamples."""
    from ftcourse.train import pad_batch, require_within_positions, token_logprobs

    require_within_positions(model, examples)
    pad_id = model.config.pad_token_id if pad_id is None else pad_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(examples[start:start + batch_size], pad_id).items()}
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        if "attention_mask" not in inputs and "position_ids" in inputs:
            inputs["use_cache"] = False   # packed rows stay apart by position only without a cache
        logprobs = token_logprobs(model(**inputs).logits, batch["labels"])
        counts = (batch["labels"][:, 1:] != -100).sum(dim=1)
        rows += torch.stack([-logprobs.sum(dim=1).double(), counts.double()], dim=1).tolist()
    model.train(was_training)
    return np.array(rows)


def perplexity_ci(model: nn.Module, examples: Sequence[dict[str, list[int]]], *, batch_size: int = 32,
                  pad_id: int | None = None, seed: int = 0) -> CI:
    """Perplexity with a 95% bootstrap interval over examples (each keeps its own token count)."""
    losses = example_losses(model, examples, batch_size, pad_id)
    return bootstrap_ci(losses, statistic=lambda rows: math.exp(rows[:, 0].sum() / rows[:, 1].sum()),
                        seed=seed)


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


# ---------------------------------------------------------------- comparing two models

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


# ---------------------------------------------------------------- contamination

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
               seed: int = 0, prompt: Callable[[dict[str, str]], str] | None = None,
               do_sample: bool = False, temperature: float = 1.0) -> TaskScore:
    """Answers to each row's `instruction`, scored against its `response`: greedy unless
    `do_sample`. With `prompt`, each row becomes raw text instead of a chat turn (a few-shot or
    retrieval prompt) and the answer is the continuation up to its first line break or full stop."""
    from ftcourse.generate import generate

    metric = metric or TASK_METRICS.get(rows[0].get("task", ""), "exact_match")
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; known: {', '.join(METRICS)}.")
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                   temperature=temperature, seed=seed)
    if prompt is None:
        predictions = generate(model, tokenizer, [row["instruction"] for row in rows], **options)
    else:
        continuations = generate(model, tokenizer, [prompt(row) for row in rows], chat=False, **options)
        predictions = [text.strip().split("\n")[0].split(".")[0].strip() for text in continuations]
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


def forgetting(model: nn.Module, tokenizer: Any, held_out: Sequence[dict[str, list[int]]],
               probes: Sequence[tuple[str, str]]) -> dict[str, float]:
    """What fine-tuning may have cost elsewhere: the loss on held-out pretraining text (log
    perplexity) and the share of pretrained facts the model still completes."""
    return {"held-out loss": math.log(perplexity(model, held_out)),
            "fact recall": float(recall_accuracy(model, tokenizer, probes).mean())}


# ---------------------------------------------------------------- results as a tidy table

def tidy(scores: dict[tuple[str, str], TaskScore]) -> list[dict[str, Any]]:
    """One row per (model, task): the metric, item count and the 95% interval, ready to save."""
    return [{"model": model, "task": task, "metric": score.metric, "n": len(score.scores),
             "estimate": score.ci.estimate, "low": score.ci.low, "high": score.ci.high}
            for (model, task), score in scores.items()]


def save_table(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON (a list of objects) or CSV, chosen by the file's suffix."""
    import csv
    import json

    path = Path(path)
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"Save results as .json or .csv, not {path.suffix or 'a file without a suffix'!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(list(rows), indent=1))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)
    return path
