"""Batches: padding, packing, length limits, the language-model loss, and running a model over data.

The bottom of the package (torch only): every module that turns tokenized examples into tensors,
computes the next-token loss or runs a model over data without training does it here, so the
rules are written once. Labels are -100 where no loss falls (prompts, padding). `batches` moves
each batch to the model's device and `evaluating` restores the model's train/eval mode afterwards,
so no loop can forget the GPU or leave a model in the wrong mode.
Shapes: B rows, T tokens, V vocabulary.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

# loss_fn(model, batch) -> (sum of per-item losses, number of items) for one micro-batch, and
# optionally a dict of other per-item sums to log as means (e.g. DPO's reward accuracy).
LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, ...]]

# ---------------------------------------------------------------- lengths


def longest_sequence(example: dict[str, Any]) -> int:
    """Tokens in the longest sequence of an example (`input_ids`, or `chosen_` and `rejected_input_ids`)."""
    return max((len(ids) for key, ids in example.items() if key.endswith("input_ids")), default=0)


def tokens_of(example: dict[str, Any]) -> int:
    """Tokens in one example (every `*input_ids` list: a sequence, or a preference pair's two)."""
    return sum(len(ids) for key, ids in example.items() if key.endswith("input_ids"))


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position scheme was trained for, if its config says."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def require_within_positions(model: nn.Module, examples: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError if an example is longer than the model's positions (less its virtual tokens,
    if any): a Llama runs past them without an error (RoPE extends) on positions it never saw."""
    limit = max_positions(model)
    if limit is None:
        return
    limit -= getattr(model, "num_virtual_tokens", 0)
    if too_long := [i for i, example in enumerate(examples) if longest_sequence(example) > limit]:
        first = too_long[0]
        raise ValueError(f"{len(too_long)} example(s) (first: {first}, {longest_sequence(examples[first])} "
                         f"tokens) are longer than the model's {limit} positions; a Llama would run past "
                         "them without an error (RoPE extends) on positions it never saw. Leave them out "
                         "(ftcourse.batching.leave_out_too_long) or shorten them.")


def leave_out_too_long(examples: Sequence[dict[str, list[int]]],
                       max_len: int | None) -> list[dict[str, list[int]]]:
    """The examples whose every `*input_ids` fits in `max_len` tokens. The others are left out with
    a warning that counts them (cutting one would cut off its answer and EOS); none left is an error."""
    if max_len is None:
        return list(examples)
    too_long = [i for i, ex in enumerate(examples) if longest_sequence(ex) > max_len]
    if not too_long:
        return list(examples)
    if len(too_long) == len(examples):
        raise ValueError(f"All {len(examples)} examples are longer than max_len={max_len} tokens, so "
                         "none is left to train on. Shorten them or raise max_len.")
    warnings.warn(f"Left out {len(too_long)} of {len(examples)} examples longer than {max_len} "
                  f"tokens (first: row {too_long[0]}). Shorten them or raise max_len.", stacklevel=3)
    skipped = set(too_long)
    return [ex for i, ex in enumerate(examples) if i not in skipped]


# ---------------------------------------------------------------- padding and packing

def pad_batch(examples: Sequence[dict[str, Sequence[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad `input_ids` (with `pad_id`) and `labels` (with -100) to the longest example.

    Packed rows (examples with `position_ids`) get their positions padded with 0 and no
    attention mask: transformers then keeps the packed examples apart by their positions.
    """
    length = max(len(ex["input_ids"]) for ex in examples)
    packed = "position_ids" in examples[0]

    def padded(rows: list[Sequence[int]], value: int) -> Tensor:
        # Pad the lists, then convert once: ~5x faster than copying row by row into a tensor.
        return torch.tensor([[*row, *[value] * (length - len(row))] for row in rows], dtype=torch.long)

    input_ids = [ex["input_ids"] for ex in examples]
    second = [ex["position_ids"] for ex in examples] if packed else [[1] * len(ids) for ids in input_ids]
    return {"input_ids": padded(input_ids, pad_id),
            "labels": padded([ex.get("labels", ex["input_ids"]) for ex in examples], -100),
            ("position_ids" if packed else "attention_mask"): padded(second, 0)}   # mask or positions


def pad_pairs(pairs: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """A batch of B preference pairs as 2B right-padded rows: the chosen answers first, then the rejected."""
    rows = [{"input_ids": p[f"{side}_input_ids"], "labels": p[f"{side}_labels"]}
            for side in ("chosen", "rejected") for p in pairs]
    return pad_batch(rows, pad_id)


def pack_examples(examples: Sequence[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Greedy first-fit packing into rows of at most `max_len` tokens, keeping examples whole.

    Each row has `input_ids`, `labels` and `position_ids` that restart at 0 for every example; the
    first label of every example is -100 (it would be predicted from the previous example).
    """
    if empty := [i for i, ex in enumerate(examples) if not ex["input_ids"]]:
        raise ValueError(f"{len(empty)} example(s) (first: {empty[0]}) have no tokens; drop them before "
                         "packing.")
    if too_long := [i for i, ex in enumerate(examples) if len(ex["input_ids"]) > max_len]:
        raise ValueError(f"{len(too_long)} example(s) (first: {too_long[0]}) are longer than "
                         f"max_len={max_len}; packing keeps examples whole. Raise max_len or filter them.")
    rows: list[dict[str, list[int]]] = []
    for example in examples:
        n = len(example["input_ids"])
        row = next((r for r in rows if len(r["input_ids"]) + n <= max_len), None)
        if row is None:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += example["input_ids"]
        row["labels"] += [-100] + list(example.get("labels", example["input_ids"]))[1:]
        row["position_ids"] += list(range(n))
    return rows


def padding_free_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """One batch with little padding: its examples, longest first, packed into as few rows of the
    longest one's length as hold them (first fit), positions restarting for every example.

    For a model that keeps packed examples apart by their positions (a transformers causal LM:
    `train.keeps_packed_rows_apart`) the loss and its gradients are `pad_batch`'s up to rounding:
    the same examples and labels, fewer padding tokens to compute when lengths vary (TRL's
    `padding_free`). A batch that packing would not shorten, and rows packed already, are padded
    as they are.
    """
    if "position_ids" in examples[0]:
        return pad_batch(examples, pad_id)
    longest_first = sorted(examples, key=lambda example: len(example["input_ids"]), reverse=True)
    rows = pack_examples(longest_first, len(longest_first[0]["input_ids"]))
    return pad_batch(rows if len(rows) < len(examples) else examples, pad_id)


def example_spans(batch: dict[str, Tensor], pad_id: int) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example in a batch from `pad_batch`: one per padded row, up to
    its attention mask's end; one per restart of the positions in packed rows, padding left out."""
    if "attention_mask" in batch:
        return [(row, 0, int(mask.sum())) for row, mask in enumerate(batch["attention_mask"])]
    if "position_ids" not in batch:
        raise ValueError("example_spans needs a batch with attention_mask (padded rows) or position_ids "
                         "(packed rows), as pad_batch makes; this one has neither: "
                         f"{', '.join(sorted(batch))}.")
    spans = []
    for row, (ids, positions) in enumerate(zip(batch["input_ids"].tolist(), batch["position_ids"].tolist())):
        starts = [i for i, position in enumerate(positions) if position == 0]
        spans += [(row, start, end) for start, end in zip(starts, starts[1:] + [len(ids)])
                  if ids[start:end] != [pad_id]]       # padding: lone pad tokens at position 0
    return spans


def packed_attention_mask(position_ids: Sequence[int]) -> Tensor:
    """(T, T) booleans for one packed row: token i may attend to token j when both belong to the
    same example (positions restart at 0 for each) and j <= i. The mask transformers builds."""
    segment = torch.cumsum(torch.tensor(position_ids) == 0, dim=0)
    causal = torch.ones(len(position_ids), len(position_ids), dtype=torch.bool).tril()
    return causal & (segment[:, None] == segment[None, :])


def pad_id_of(model: nn.Module) -> int:
    """The model's padding token id, from its config."""
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad_id is None:
        raise ValueError("The model's config has no pad_token_id; set model.config.pad_token_id "
                         "(distinct from eos) or pass collate= to train().")
    return pad_id


# ---------------------------------------------------------------- the loss

def model_inputs(batch: dict[str, Tensor]) -> dict[str, Any]:
    """The keyword arguments a causal LM takes from a batch (labels stay out: the loss is ours)."""
    inputs: dict[str, Any] = {k: v for k, v in batch.items()
                              if k in ("input_ids", "attention_mask", "position_ids")}
    if "attention_mask" not in inputs and "position_ids" in inputs:
        inputs["use_cache"] = False   # transformers separates packed rows by position only without a cache
    return inputs


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32 if it is in a narrower float (bf16, fp16): losses over a vocabulary need the
    range. A float64 `x` stays float64 (`.float()` would round it down)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy over positions whose label is not -100, and their count."""
    logits = model(**model_inputs(batch)).logits
    labels = batch["labels"][:, 1:]                      # token t predicts label t + 1
    logits = logits[:, :-1]
    loss_sum = nn.functional.cross_entropy(at_least_float32(logits.reshape(-1, logits.size(-1))),
                                           labels.reshape(-1), ignore_index=-100, reduction="sum")
    return loss_sum, (labels != -100).sum()


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label_{t+1} | tokens <= t) per position, (B, T-1); 0 where the label is -100."""
    labels = labels[:, 1:]
    mask = labels != -100
    logprobs = torch.log_softmax(at_least_float32(logits[:, :-1]), dim=-1)
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


# ---------------------------------------------------------------- running a model over data

def default_device() -> torch.device:
    """Where ftcourse puts a model to run: the GPU if there is one (as Accelerate picks), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (its first parameter's device)."""
    return next(model.parameters()).device


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: eval mode (no dropout) and no gradients. After: the model's own mode, whatever it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def batches(model: nn.Module, examples: Sequence[Any], batch_size: int,
            collate: Callable[[Sequence[Any]], dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
    """`examples` in order, `batch_size` at a time, collated and moved to the model's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = model_device(model)
    for start in range(0, len(examples), batch_size):
        yield {key: value.to(device) for key, value in collate(examples[start:start + batch_size]).items()}
