"""Likelihoods: perplexity, exp(mean next-token loss), with an interval; multiple-choice scores.

`example_losses` keeps each example's summed loss and token count, the items an interval
resamples (each keeps its own length); `choice_logprobs` sums it over each answer of a question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

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


def continuation_example(tokenizer: Any, context: str, continuation: str) -> dict[str, list[int]]:
    """`context + continuation` tokenized as one text, labelled on the continuation's tokens only.

    As one text because that is how the model reads it; whitespace that ends the context moves
    to the continuation, where a BPE tokenizer joins it to the next word (" Pelmora").
    """
    if not context.strip():
        raise ValueError("The context is empty; a continuation's likelihood needs text before it.")
    stripped = context.rstrip()
    whole = tokenizer(stripped + context[len(stripped):] + continuation)["input_ids"]
    start = len(tokenizer(stripped)["input_ids"])
    if start >= len(whole):
        raise ValueError(f"The continuation {continuation!r} adds no tokens to its context; give it text.")
    return {"input_ids": whole, "labels": [-100] * start + whole[start:]}


def choice_logprobs(model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, Any]], *,
                    delimiter: str = " ", batch_size: int = 32) -> list[np.ndarray]:
    """Per row, the summed log-probability of each of its `choices` (after `delimiter`) given
    its `context`: what a multiple-choice question is scored by."""
    if missing := [i for i, row in enumerate(rows) if not {"context", "choices"} <= set(row)]:
        raise ValueError(f"Row {missing[0]} has no 'context' or no 'choices' field (it has "
                         f"{', '.join(rows[missing[0]])}); see ftcourse.data.tasks.as_multiple_choice.")
    examples = [continuation_example(tokenizer, row["context"], delimiter + choice)
                for row in rows for choice in row["choices"]]
    logprobs = -example_losses(model, examples, batch_size)[:, 0]
    ends = np.cumsum([len(row["choices"]) for row in rows])
    return np.split(logprobs, ends[:-1])


def perplexity_ci(model: nn.Module, examples: Sequence[dict[str, list[int]]], *, batch_size: int = 32,
                  pad_id: int | None = None, seed: int = 0) -> CI:
    """Perplexity with a 95% bootstrap interval over examples (each keeps its own token count)."""
    losses = example_losses(model, examples, batch_size, pad_id)
    return bootstrap_ci(losses, statistic=lambda rows: math.exp(rows[:, 0].sum() / rows[:, 1].sum()),
                        seed=seed)
