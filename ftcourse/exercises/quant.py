"""Exercises on 4-bit quantization (chapter 06_qlora): NF4 codes of a block, decoding, storage cost;
predicting which 4-bit type loses least on uniform weights; an open experiment on the block size.

Each check runs the learner's function on seeded random blocks and compares it with
`ftcourse.quant` (`quantize_4bit`, `dequantize_4bit`, `bits_per_parameter`), which the test suite
proves byte-equal to bitsandbytes; common mistakes are named in the message.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close, expect_number
from ftcourse.exercises.kinds import Choice, Field, experiment, one_value_per, predict
from ftcourse.quant import (
    NF4_CODE,
    Quantized4bit,
    bits_per_parameter,
    dequantize_4bit,
    nearest_code,
    quantize_4bit,
    unpack_nibbles,
)


def nf4_block_indices(block: Tensor) -> Tensor:
    """The NF4 index (0..15) of each weight of one block: scale the block into [-1, 1] by its
    absolute maximum, then pick the nearest of the 16 values in NF4_CODE (not evenly spaced)."""
    scaled = block / block.abs().max()
    distances = (scaled[:, None] - NF4_CODE[None, :]).abs()     # (n, 16): every weight to every code
    return distances.argmin(dim=1)


def dequantize_nf4_block(indices: Tensor, absmax: float) -> Tensor:
    """The weights a block of NF4 indices stands for: look up each code value, then undo the
    scaling by multiplying with the block's absolute maximum."""
    return NF4_CODE[indices] * absmax


def bits_per_weight(blocksize: int = 64, double_quant: bool = False, nested_blocksize: int = 256) -> float:
    """Bits stored per weight: the 4-bit code plus its share of the block scales. Double
    quantization stores each block's scale in 8 bits, plus one 32-bit scale per nested block."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)
    return 4 + 32 / blocksize      # one float32 absmax shared by the blocksize weights


# ---------------------------------------------------------------- hidden tests

def _random_block(seed: int, size: int) -> Tensor:
    # A normal block whose largest magnitude is negative, so that max and absolute max differ.
    block = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return -block if block[block.abs().argmax()] > 0 else block


def _quantized_block(block: Tensor) -> Quantized4bit:
    # The package's quantization of one block, the oracle.
    return quantize_4bit(block, "nf4", blocksize=block.numel())


@exercise(chapter="06_qlora", solution=nf4_block_indices,
          task="Return the NF4 index (0..15) of each weight of one block: absmax scaling, then the "
               "nearest NF4 code value.")
def check_nf4_block_indices(answer: Callable) -> None:
    """Compare with `quantize_4bit` on blocks of 64 and 16 normal weights."""
    for seed, size in [(0, 64), (1, 16), (2, 64)]:
        block = _random_block(seed, size)
        want = unpack_nibbles(_quantized_block(block).packed, size)
        what = f"nf4_block_indices on a block of {size}"
        got = answer(block.clone())
        if isinstance(got, Tensor) and got.is_floating_point():
            mistake = ("returned the code values NF4_CODE[i]; return the indices i themselves"
                       if got.shape == want.shape and torch.equal(got, NF4_CODE[want]) else
                       "returned floating-point numbers")
            raise ExerciseFailed(f"{what}: {mistake}: integers 0..15 (e.g. from argmin).")
        scaled = block / block.abs().max()
        hints = {
            "divided by the block's largest value (max) instead of its absolute maximum "
            "(abs().max()); here the largest magnitude is a negative weight.":
                nearest_code(block / block.max(), NF4_CODE),
            "did not scale the block: divide it by its absolute maximum first, so it lies in [-1, 1].":
                nearest_code(block, NF4_CODE),
            "rounded onto 16 evenly spaced levels; NF4's values are not evenly spaced: take the index "
            "of the nearest value in NF4_CODE.": torch.round((scaled + 1) * 7.5).long(),
        }
        expect_close(got, want, what, atol=0, hints=hints)


@exercise(chapter="06_qlora", solution=dequantize_nf4_block,
          task="Turn one block's NF4 indices and its absolute maximum back into weights.")
def check_dequantize_nf4_block(answer: Callable) -> None:
    """Compare with `dequantize_4bit` on quantized normal blocks."""
    for seed, size in [(3, 64), (4, 16)]:
        quantized = _quantized_block(_random_block(seed, size))
        indices, absmax = unpack_nibbles(quantized.packed, size), quantized.absmax.item()
        code = NF4_CODE[indices]
        hints = {
            "divided by absmax; the scaled weights were divided by it, so decoding multiplies.":
                code / absmax,
            "forgot to multiply by the block's absmax: the code values are the weights scaled to [-1, 1].":
                code,
            "treated the 16 values as evenly spaced (index / 7.5 - 1); look them up in NF4_CODE.":
                (indices / 7.5 - 1) * absmax,
            "multiplied the indices themselves; look up their values NF4_CODE[indices] first.":
                indices * absmax,
        }
        expect_close(answer(indices.clone(), absmax), dequantize_4bit(quantized), atol=1e-6, hints=hints,
                     what=f"dequantize_nf4_block on {size} indices with absmax {absmax:.4f}")


@exercise(chapter="06_qlora", solution=bits_per_weight,
          task="Bits stored per weight in blockwise 4-bit quantization, with and without double "
               "quantization of the block scales.")
def check_bits_per_weight(answer: Callable) -> None:
    """Compare with `bits_per_parameter` for several block sizes, with and without double quantization."""
    for blocksize, double_quant, nested in [(64, False, 256), (64, True, 256), (128, True, 256),
                                            (32, True, 128), (128, False, 256)]:
        want = bits_per_parameter(blocksize, double_quant, nested)
        scales = want - 4
        hints = {
            "left out the 4 bits of the code itself.": scales,
            "counted bytes, not bits.": want / 8,
            "added a whole scale per weight; a scale is shared by a block, so it adds its bits divided "
            "by the block size.": 4 + (8 + 32 / nested if double_quant else 32),
        }
        if double_quant:
            hints |= {
                "counted 32-bit block scales; double quantization stores them in 8 bits.":
                    4 + 32 / blocksize + 32 / (blocksize * nested),
                "left out the second-level scales: one 32-bit number per nested_blocksize blocks, "
                "32 / (blocksize * nested_blocksize) bits per weight.": 4 + 8 / blocksize,
            }
        else:
            hints["used 8-bit scales without double quantization; plain scales are 32-bit floats."] = \
                4 + 8 / blocksize + 32 / (blocksize * nested)
        expect_number(answer(blocksize, double_quant, nested), want, hints=hints,
                      what=f"bits_per_weight(blocksize={blocksize}, double_quant={double_quant}, "
                           f"nested_blocksize={nested})")


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("nf4_uniform_weights", chapter="06_qlora",
        question="NF4 loses the least of the three 4-bit types on normally distributed weights. On weights "
                 "drawn uniformly from [-1, 1], which type has the smallest round-trip error: 'int4', 'fp4' "
                 "or 'nf4'?",
        form=Choice(("int4", "fp4", "nf4"), right=lambda errors: min(errors, key=errors.get)))


def _bits_as_stored(finding: dict) -> str | None:
    # The bytes stored for a weight of 8,192 values or more come within 0.05 bits of the paper's formula,
    # plain or double-quantized (the excess: a partial last block, one offset and second-level scale).
    def off_formula(blocksize: int, bits: float) -> bool:
        return min(abs(bits - bits_per_parameter(blocksize, double)) for double in (False, True)) > 0.05

    blocksizes, bits_per_weight = finding["blocksizes"], finding["bits_per_weight"]
    if len(blocksizes) != len(bits_per_weight):
        return None                                  # one_value_per says what is wrong
    far = [(size, bits) for size, bits in zip(blocksizes, bits_per_weight) if off_formula(size, bits)]
    if not far:
        return None
    return (f"bits_per_weight {[bits for _, bits in far]} for blocksizes {[size for size, _ in far]} match "
            "neither 4 + 32 / blocksize (plain) nor 4 + 8 / blocksize + 32 / (256 blocksize) (double "
            "quantization): measure 8 * nbytes() / numel() on a weight of the model, in bits")


experiment("quant_block_size", chapter="06_qlora",
           question="What does the block size trade? Quantize one linear weight of the base model to NF4 "
                    "with three block sizes or more (bitsandbytes uses 64), measure for each the round-trip "
                    "error (quantization_error) and the bits stored per weight (8 * nbytes() / numel(), with "
                    "or without double quantization), and say which block size you would choose and why "
                    "QLoRA double-quantizes the scales instead of using larger blocks.",
           fields={"blocksizes": Field(list, item=int, low=2, min_len=3),
                   "errors": Field(list, item=float, low=0, high=1, min_len=3),
                   "bits_per_weight": Field(list, item=float, low=4, high=20, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("blocksizes", ["errors", "bits_per_weight"], "block size", "block sizes"),
                   _bits_as_stored))
