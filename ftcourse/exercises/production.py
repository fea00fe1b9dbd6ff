"""Exercises on exporting for llama.cpp (chapter 10_production): the q/k row order of RoPE, and
the Q8_0 quantization of one block of weights; predicting what splitting a file by row leaks; an
open experiment on where a request's time goes.

The first check compares with `ftcourse.llamacpp.rope_permute`, which the test suite proves right
through llama.cpp's own logits; the second with the `gguf` package's Q8_0 quantizer, the one
llama.cpp's converter uses. Common mistakes are named in the message.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.llamacpp import rope_permute


def rope_permute_rows(rows: Tensor, heads: int) -> Tensor:
    """Reorder a q or k projection's rows for llama.cpp: within each head, transformers keeps the
    first halves of the rotated pairs, then the second halves; llama.cpp wants them interleaved."""
    head_dim = rows.shape[0] // heads
    halves = rows.reshape(heads, 2, head_dim // 2, *rows.shape[1:])   # per head: first half, second half
    return halves.transpose(1, 2).reshape(rows.shape)                 # row i of each half, side by side


def q8_0_block(block: Tensor) -> tuple[float, Tensor]:
    """Quantize 32 weights as Q8_0: one scale d = absmax / 127, and each weight as the integer
    round(w / d) in [-127, 127]."""
    scale = block.abs().max().item() / 127
    return scale, torch.round(block / scale).to(torch.int8)


# ---------------------------------------------------------------- hidden tests

@exercise(chapter="10_production", solution=rope_permute_rows,
          task="Reorder each head's rows of a q or k projection from rotate-half order (transformers) to "
               "adjacent pairs (llama.cpp).")
def check_rope_permute_rows(answer: Callable) -> None:
    """Compare with `llamacpp.rope_permute` on projections of 2 and 4 heads."""
    for heads, head_dim in [(2, 8), (4, 4)]:
        rows = torch.arange(heads * head_dim * 3, dtype=torch.float32).reshape(heads * head_dim, 3)
        half = head_dim // 2
        hints = {
            "returned the rows unchanged: within each head, row i of the first half must be followed by "
            "row i of the second half.": rows,
            "interleaved the halves of the whole matrix, not of each head: reshape to (heads, 2, "
            "head_dim // 2, ...) first.": rows.reshape(2, -1, 3).transpose(0, 1).reshape(rows.shape),
            "undid the permutation instead of doing it (the inverse order): the halves are the second "
            "axis of (heads, 2, head_dim // 2, ...).":
                rows.reshape(heads, half, 2, 3).transpose(1, 2).reshape(rows.shape),
        }
        expect_close(answer(rows.clone(), heads), rope_permute(rows, heads), atol=0, hints=hints,
                     what=f"rope_permute_rows on {heads} heads of {head_dim} rows")


def _gguf_q8_0(block: Tensor) -> tuple[float, Tensor]:
    # The gguf package's Q8_0 bytes of one block: a float16 scale, then 32 int8 values.
    import gguf

    raw = gguf.quants.quantize(block.numpy()[None, :], gguf.GGMLQuantizationType.Q8_0)[0]
    return float(raw[:2].view(np.float16)[0]), torch.from_numpy(raw[2:].view(np.int8).copy())


@exercise(chapter="10_production", solution=q8_0_block,
          task="Quantize one block of 32 weights as Q8_0: the scale absmax / 127 and each weight's integer.")
def check_q8_0_block(answer: Callable) -> None:
    """Compare with the gguf package's Q8_0 quantizer on blocks whose largest weight is negative."""
    for seed in range(3):
        block = torch.randn(32, generator=torch.Generator().manual_seed(seed))
        block = -block if block[block.abs().argmax()] > 0 else block
        scale, codes = _gguf_q8_0(block)
        got = answer(block.clone())
        if not (isinstance(got, tuple) and len(got) == 2):
            raise ExerciseFailed(f"q8_0_block: return (scale, integers), got {type(got).__name__}.")
        absmax = block.abs().max().item()
        expect_number(got[0], scale, rel=1e-3, what="q8_0_block's scale", hints={
            "divided the largest weight (max) instead of the largest magnitude (abs().max()); here the "
            "largest magnitude is a negative weight.": block.max().item() / 127,
            "divided by 128; Q8_0 keeps -128 unused, so the scale is absmax / 127.": absmax / 128,
            "divided by 255, as for unsigned bytes; Q8_0's integers are signed, in [-127, 127].":
                absmax / 255,
            "returned absmax itself; the scale is absmax / 127.": absmax})
        expect_close(torch.as_tensor(got[1]).to(torch.int64), codes.to(torch.int64), atol=0,
                     what="q8_0_block's integers", hints={
                         "truncated toward zero (int()) instead of rounding to the nearest integer.":
                             torch.trunc(block / (absmax / 127)).to(torch.int64),
                         "multiplied by the scale instead of dividing by it.":
                             torch.round(block * (absmax / 127)).to(torch.int64)})


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("row_split_leak", chapter="10_production",
        question="A data file holds every row three times (a file appended to itself, or three copies of "
                 "each example after augmentation). Split it 60/10/30 by row instead of by prompt: what "
                 "percentage of the test rows have their prompt in the training split too?",
        form=Number(rel=0.25, low=0, high=100, unit="%"))


def _token_cost_fits_times(finding: dict) -> str | None:
    # Latency is about a fixed cost (the prompt) plus ms_per_token per new token, so the tokens of the
    # longest answer alone cannot take much longer than that whole answer did (1.5x allows for noise).
    lengths, times, per_token = finding["new_tokens"], finding["milliseconds"], finding["ms_per_token"]
    if len(lengths) != len(times):
        return None                                  # one_value_per says what is wrong
    longest = lengths.index(max(lengths))
    if per_token * lengths[longest] <= 1.5 * times[longest]:
        return None
    return (f"ms_per_token {per_token} times {lengths[longest]} tokens is more than the "
            f"{times[longest]} ms that answer took: give the cost of one more token in milliseconds (the "
            "slope of time against new_tokens)")


experiment("generation_latency", chapter="10_production",
           question="Where does a request's time go? With llama.cpp on the base model's GGUF file, time "
                    "greedy answers of three lengths or more (never stopping early at EOS), and say how the "
                    "latency grows with the answer's length, what one more token costs, and what that means "
                    "for the max_tokens a server allows.",
           fields={"new_tokens": Field(list, item=int, low=1, min_len=3),
                   "milliseconds": Field(list, item=float, low=0, min_len=3),
                   "ms_per_token": Field(float, low=0),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("new_tokens", ["milliseconds"], "answer length", "answer lengths"),
                   _token_cost_fits_times))
