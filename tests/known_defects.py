"""Defects in bitsandbytes' CPU 4-bit kernels that our equivalence tests found, and where they apply.

Each defect is measured on this machine by a probe in the package (`ftcourse doctor` prints the
same), so a comparison that meets one is an expected failure here: `xfail(strict=True)`, which
turns into a failure the day bitsandbytes is fixed, so the mark comes off. Our side of every such
comparison is also checked against the definition, which runs everywhere and fails everywhere if
ours is wrong. The reports, ready to send upstream: book/bitsandbytes_report.md.

1. `dequantize_4bit` (bitsandbytes 0.50.2, any CPU with AVX-512F): the native AVX-512 kernel takes
   a row of n values (n a multiple of 16) and reads its scales at absmax[row * (n // blocksize) +
   column // blocksize], as if every row began a new block; right only where n is a multiple of
   the block size. Every 4-bit matmul on the CPU dequantizes this way, so a bitsandbytes
   `Linear4bit` with such an in_features computes with wrong weights. Reproduction:

       import torch, bitsandbytes.functional as F
       x = torch.randn(2, 96) * 0.02                  # rows of 96 values, blocks of 64
       packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
       code = F.get_4bit_type("nf4", device="cpu")
       nibbles = torch.stack([packed.flatten() >> 4, packed.flatten() & 15], 1).flatten().long()
       expected = (code[nibbles] * state.absmax[torch.arange(192) // 64]).view(2, 96)
       print(int((F.dequantize_4bit(packed, state) != expected).sum()), "of 192 values wrong")

2. `Linear4bit` in eval mode (bitsandbytes 0.50.2, a CPU with AVX512-BF16): its first forward
   without gradients repacks the weight for a fused kernel that multiplies in bfloat16 whatever
   `compute_dtype` says (relative error ~1e-3 instead of ~1e-7); it fails for in_features not a
   multiple of the block size or out_features not a multiple of 32; and the layer stays repacked,
   so a later training forward goes through an op with no backward: no gradient reaches the
   layer's input (torch warns once, "an autograd kernel was not registered").

What one machine can exercise. bitsandbytes chooses its native kernels by the CPU's features
(CPUID, through `__builtin_cpu_supports`), once per process. `ATEN_CPU_CAPABILITY` steers torch's
kernels only (and bitsandbytes' Python-side choice of its int8 matmul and of a fallback for
blocksizes >= 2048, which read `torch.backends.cpu.get_cpu_capability()`); under
`ATEN_CPU_CAPABILITY=avx2` on an AVX-512 machine, bitsandbytes still runs its AVX-512 kernels, and
these marks still apply, as the probes find. On any x86 machine the shapes reach bitsandbytes'
three CPU dequantize paths: the native AVX-512 one (rows a multiple of 16, where the CPU has
AVX-512F), the native scalar one (other even row lengths) and the PyTorch one (odd row lengths).
Its AVX512-BF16 eval path runs only where the CPU has AVX512-BF16.
"""

from __future__ import annotations

import bitsandbytes
import pytest

from ftcourse.qlora import bitsandbytes_eval_error
from ftcourse.quant import DEFAULT_BLOCKSIZE, bitsandbytes_dequantize_mismatches

VERSION = bitsandbytes.__version__
DEQUANTIZE_MISMATCHES = bitsandbytes_dequantize_mismatches()     # {row length: wrong values}, here
EVAL_ERROR = bitsandbytes_eval_error()                            # relative, here
EVAL_IN_BFLOAT16 = EVAL_ERROR > 1e-4      # float32 rounding gives ~1e-7, bfloat16's 8 bits ~1e-3


def dequantize_is_wrong_for(row_length: int, blocksize: int = DEFAULT_BLOCKSIZE) -> bool:
    """Whether defect 1 applies here to rows of `row_length` values."""
    return bool(DEQUANTIZE_MISMATCHES) and row_length % 16 == 0 and row_length % blocksize != 0


def dequantize_defect(row_length: int) -> pytest.MarkDecorator:
    """For a comparison with bitsandbytes' dequantized rows: an expected failure where defect 1 applies."""
    return pytest.mark.xfail(dequantize_is_wrong_for(row_length), strict=True, reason=(
        f"bitsandbytes {VERSION}'s AVX-512 dequantize_4bit reads the wrong block scales for rows of "
        f"{row_length} values (a multiple of 16, not of {DEFAULT_BLOCKSIZE}) on this CPU "
        f"(probe: {DEQUANTIZE_MISMATCHES}); reproduction in tests/known_defects.py"))


# For a comparison with bitsandbytes' Linear4bit in eval mode: an expected failure where defect 2 applies.
EVAL_DEFECT = pytest.mark.xfail(EVAL_IN_BFLOAT16, strict=True, reason=(
    f"bitsandbytes {VERSION}'s Linear4bit repacks its weight at an eval-mode forward on this "
    f"AVX512-BF16 CPU and then computes in bfloat16 (probe: relative error {EVAL_ERROR:.1e}), "
    "fails for some shapes, and passes no gradient to its input; see tests/known_defects.py"))
