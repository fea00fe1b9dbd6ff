"""Scoring a model on a task: its answers, per-item scores and the mean's interval, as a tidy table.

Also what fine-tuning may cost elsewhere (`forgetting`): held-out loss and the recall of facts.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ftcourse.evaluate.likelihood import choice_logprobs, perplexity
from ftcourse.evaluate.metrics import METRICS, TASK_METRICS
from ftcourse.evaluate.stats import CI, bootstrap_ci
from ftcourse.generate import generate


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
    """Answers to each row's `instruction` (or to its chat so far, `messages`), scored against its
    `response`: greedy unless `do_sample`. With `prompt`, each row becomes raw text instead of a
    chat turn (a few-shot or retrieval prompt) and the answer is the continuation up to its first
    line break or full stop."""
    metric = metric or TASK_METRICS.get(rows[0].get("task", ""), "exact_match")
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; known: {', '.join(METRICS)}.")
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                   temperature=temperature, seed=seed)
    if prompt is None:
        asked = [row["messages"] if "messages" in row else row["instruction"] for row in rows]
        predictions = generate(model, tokenizer, asked, **options)
    else:
        continuations = generate(model, tokenizer, [prompt(row) for row in rows], chat=False, **options)
        predictions = [text.strip().split("\n")[0].split(".")[0].strip() for text in continuations]
    scores = METRICS[metric](predictions, [row["response"] for row in rows])
    return TaskScore(predictions, scores, bootstrap_ci(scores, seed=seed), metric)


def score_choices(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, Any]], *,
                  per_character: bool = False, batch_size: int = 32, seed: int = 0) -> TaskScore:
    """Multiple choice by likelihood: the choice most probable after each row's context (per
    character of the choice with `per_character`, the harness's acc_norm), right or wrong."""
    logprobs = choice_logprobs(model, tokenizer, rows, batch_size=batch_size)
    if per_character:
        logprobs = [values / np.array([len(choice) for choice in row["choices"]], dtype=float)
                    for values, row in zip(logprobs, rows)]
    picks = [int(np.argmax(values)) for values in logprobs]
    scores = np.array([float(pick == row["answer"]) for pick, row in zip(picks, rows)])
    return TaskScore([row["choices"][pick] for pick, row in zip(picks, rows)], scores,
                     bootstrap_ci(scores, seed=seed), "acc_norm" if per_character else "acc")


def recall_accuracy(model: nn.Module, tokenizer: Any, probes: Sequence[tuple[str, str]],
                    batch_size: int = 64) -> np.ndarray:
    """1.0 where the greedy continuation of a probe's prefix starts with its value."""
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


def tidy(scores: dict[tuple[str, str], TaskScore]) -> list[dict[str, Any]]:
    """One row per (model, task): the metric, item count and the 95% interval, ready to save."""
    return [{"model": model, "task": task, "metric": score.metric, "n": len(score.scores),
             "estimate": score.ci.estimate, "low": score.ci.low, "high": score.ci.high}
            for (model, task), score in scores.items()]


def save_table(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON (a list of objects) or CSV, chosen by the file's suffix."""
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
