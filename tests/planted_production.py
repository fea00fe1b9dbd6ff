"""Wrong answers planted in the exercises of chapter 10, each a mistake learners make (see
planted_efficient.py for how tests/test_exercises.py uses them)."""

from __future__ import annotations

import torch
from torch import Tensor


def permute_unchanged(rows: Tensor, heads: int) -> Tensor:
    return rows


def permute_whole_matrix(rows: Tensor, heads: int) -> Tensor:
    return rows.reshape(2, rows.shape[0] // 2, *rows.shape[1:]).transpose(0, 1).reshape(rows.shape)


def permute_inverse(rows: Tensor, heads: int) -> Tensor:
    head_dim = rows.shape[0] // heads
    return rows.reshape(heads, head_dim // 2, 2, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)


def q8_scale_from_max(block: Tensor) -> tuple[float, Tensor]:
    scale = block.max().item() / 127
    return scale, torch.round(block / scale).to(torch.int8)


def q8_scale_over_128(block: Tensor) -> tuple[float, Tensor]:
    scale = block.abs().max().item() / 128
    return scale, torch.round(block / scale).to(torch.int8)


def q8_truncated(block: Tensor) -> tuple[float, Tensor]:
    scale = block.abs().max().item() / 127
    return scale, torch.trunc(block / scale).to(torch.int8)


def q8_codes_only(block: Tensor) -> Tensor:
    return torch.round(block / (block.abs().max() / 127)).to(torch.int8)


PLANTED = {
    "rope_permute_rows": [(permute_unchanged, "returned the rows unchanged"),
                          (permute_whole_matrix, "of the whole matrix, not of each head"),
                          (permute_inverse, "undid the permutation")],
    "q8_0_block": [(q8_scale_from_max, "(max) instead of the largest magnitude"),
                   (q8_scale_over_128, "divided by 128"),
                   (q8_truncated, "truncated toward zero"),
                   (q8_codes_only, "return (scale, integers)")],
}
