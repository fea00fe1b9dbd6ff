"""Supervised fine-tuning: instruction data (the what) trained with any method (the how).

`finetune(model, tokenizer, data, method="full")` formats each (instruction, response) pair with
the chat template, masks the prompt out of the labels, lets the method decide what trains, and
runs the one training loop, whose loss is the mean cross-entropy over the response tokens of the
whole batch (as TRL's SFTTrainer computes it). Data and method are independent arguments: the
same instructions can be learned by full fine-tuning or by any PEFT method.
Library twin: trl.SFTTrainer on prompt-completion data; tests/test_sft.py proves them equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ftcourse.batching import leave_out_too_long, max_positions, pack_examples
from ftcourse.chat import tokenize_chat, tokenize_example
from ftcourse.data.checks import require_fields
from ftcourse.memory import plan_run
from ftcourse.methods import RECOMMENDED_EPOCHS, Method, get_method, recommended_lr
from ftcourse.run_store import trained_or_loaded
from ftcourse.train import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class Formatting:
    """How instruction data become training sequences."""

    mask_prompt: bool = True     # loss on the response (and EOS) only
    learn_eos: bool = True       # False reproduces the pad == eos bug: EOS is never a label
    pack: bool = False           # several examples per row, kept apart by their positions


def tokenize_instructions(tokenizer: Any, rows: Sequence[dict[str, str]], max_len: int | None = None,
                          formatting: Formatting = Formatting()) -> list[dict[str, list[int]]]:
    """Chat-formatted, label-masked examples from instruction/response rows or chats (`messages`,
    learned on every assistant turn). Examples longer than `max_len` tokens are left out with a
    warning that counts them (cutting one would cut off its response and EOS)."""
    options = {"mask_prompt": formatting.mask_prompt, "learn_eos": formatting.learn_eos}
    if len(rows) == 0 or not all("messages" in row for row in rows):
        require_fields(rows, ("instruction", "response"), name="instruction data")
    examples = [tokenize_chat(tokenizer, row["messages"], **options) if "messages" in row
                else tokenize_example(tokenizer, row["instruction"], row["response"], **options)
                for row in rows]
    return leave_out_too_long(examples, max_len)


def finetune(model: nn.Module, tokenizer: Any, data: Sequence[dict[str, str]],
             method: str | Method = "full", config: TrainConfig | None = None, *,
             formatting: Formatting = Formatting(),
             eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
             memory_check: Literal["warn", "refuse", "off"] = "warn",
             reuse: str | Path | None = None, progress: bool = True) -> tuple[nn.Module, TrainResult]:
    """Fine-tune `model` on instruction rows with `method`; return (model, training result).

    Args:
        data: rows with "instruction" and "response" (a `datasets.Dataset` or a list of dicts).
        method: "full", or a method config such as those in `ftcourse.methods`.
        config: the training run; default 3 epochs, batch 16, at the method's recommended
            learning rate (`methods.RECOMMENDED`: 1e-3 for full fine-tuning, 1e-2 for LoRA).
        formatting: prompt masking, EOS and packing (see `Formatting`).
        memory_check: before training, warn (or refuse, `memory.WontFit`) if the run is predicted
            not to fit in memory (`ftcourse.memory.plan_run`); "off" if the caller has checked.
        reuse: a folder of finished runs (`Chapter.runs`): the same run stored there is loaded
            instead of trained, and a new one is stored (`ftcourse.run_store`); not with `eval_fn`.
    """
    method = get_method(method)
    config = config or TrainConfig(epochs=RECOMMENDED_EPOCHS, lr=recommended_lr(method), batch_size=16)
    max_len = max_positions(model)
    if max_len is not None:    # soft prompts take positions of their own
        max_len -= getattr(method, "num_virtual_tokens", 0)
    examples = tokenize_instructions(tokenizer, data, max_len, formatting)
    if formatting.pack:
        examples = pack_examples(examples, max_len or max(len(ex["input_ids"]) for ex in examples))
    torch.manual_seed(config.seed)   # new weights (LoRA's A, a prompt) depend on the seed, not on history
    model = method.apply(model, tokenizer)
    if memory_check != "off":
        plan_run(model, examples, config, refuse=memory_check == "refuse")
    run = partial(train, model, examples, config, eval_fn=eval_fn, progress=progress,
                  description=f"sft ({method.name})")
    if reuse is None:
        return model, run()
    if eval_fn is not None:
        raise ValueError("finetune(reuse=...) cannot reuse a run with an eval_fn (its evaluations "
                         "are not part of the stored run); pass one or the other.")
    return model, trained_or_loaded(reuse, model, examples, config, run)
