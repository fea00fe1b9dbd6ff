"""Perplexity, exp(mean next-token loss), with a bootstrap interval over examples.

`example_losses` keeps each example's summed loss and token count, the items an interval
resamples (each keeps its own length).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from ftcourse.batching import (
    batches,
    evaluating,
    model_inputs,
    pad_batch,
    pad_id_of,
    require_within_positions,
    token_logprobs,
)
from ftcourse.evaluate.stats import CI, bootstrap_ci


def perplexity(model: nn.Module, examples: Sequence[dict[str, list[int]]], batch_size: int = 32,
               pad_id: int | None = None) -> float:
    """exp(mean next-token loss) over the labelled tokens of tokenized examples."""
    losses = example_losses(model, examples, batch_size, pad_id)
    return math.exp(losses[:, 0].sum() / losses[:, 1].sum())


def example_losses(model: nn.Module, examples: Sequence[dict[str, list[int]]], batch_size: int = 32,
                   pad_id: int | None = None) -> np.ndarray:
    """(summed next-token loss, labelled tokens) per example, shape (n, 2): the items that a
    perplexity's confidence interval resamples."""
    require_within_positions(model, examples)
    collate = partial(pad_batch, pad_id=pad_id_of(model) if pad_id is None else pad_id)
    rows = []
    with evaluating(model):
        for batch in batches(model, examples, batch_size, collate):
            logprobs = token_logprobs(model(**model_inputs(batch)).logits, batch["labels"])
            counts = (batch["labels"][:, 1:] != -100).sum(dim=1)
            rows += torch.stack([-logprobs.sum(dim=1).double(), counts.double()], dim=1).tolist()
    return np.array(rows)


def perplexity_ci(model: nn.Module, examples: Sequence[dict[str, list[int]]], *, batch_size: int = 32,
                  pad_id: int | None = None, seed: int = 0) -> CI:
    """Perplexity with a 95% bootstrap interval over examples (each keeps its own token count)."""
    losses = example_losses(model, examples, batch_size, pad_id)
    return bootstrap_ci(losses, statistic=lambda rows: math.exp(rows[:, 0].sum() / rows[:, 1].sum()),
                        seed=seed)
