"""NF4 benchmark: our 4-bit quantize / dequantize against bitsandbytes' on the CPU.

    python benchmarks/nf4.py            # a 4096 x 4096 fp32 weight, blocksize 64, < 1 min
    python benchmarks/nf4.py --quick    # a 256 x 256 weight (what the tests run)

Both sides get the same fp32 weight, produce the same packed bytes and dequantize the same state
to the same values (all checked before timing):
`ftcourse.quant.quantize_4bit` / `dequantize_4bit` against `bitsandbytes.functional.quantize_4bit`
/ `dequantize_4bit`, with and without double quantization. Goal: ours <= 1.2x bitsandbytes' time.
bitsandbytes quantizes with PyTorch ops on the CPU but dequantizes with a native C++ kernel.
"""

from __future__ import annotations

import torch
from comparison import Comparison, command_line, interleaved_seconds, median, spread

from ftcourse.quant import dequantize_4bit, from_bitsandbytes, quantize_4bit

GOAL = 1.2


def run(quick: bool = False, repeats: int | None = None) -> list[Comparison]:
    """Time quantize and dequantize, plain and double-quantized, ours against bitsandbytes."""
    import bitsandbytes.functional as bnb

    size, repeats = (256, repeats or 3) if quick else (4096, repeats or 7)
    weight = torch.randn(size, size, generator=torch.Generator().manual_seed(0)) * 0.02
    rows = []
    for double_quant in (False, True):
        ours = quantize_4bit(weight, "nf4", blocksize=64, double_quant=double_quant)
        packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                          compress_statistics=double_quant)
        assert torch.equal(ours.packed, packed), "our NF4 bytes differ from bitsandbytes'"
        # Both sides dequantize bitsandbytes' state (their 8-bit double-quant codes may differ
        # from ours in <= 1% of blocks, see tests/test_quant.py), and must agree exactly.
        same_state = from_bitsandbytes(packed, state)
        assert torch.equal(dequantize_4bit(same_state), bnb.dequantize_4bit(packed, state))
        suffix = " + double quant" if double_quant else ""
        quantize = interleaved_seconds({
            "ours": lambda dq=double_quant: quantize_4bit(weight, "nf4", blocksize=64, double_quant=dq),
            "library": lambda dq=double_quant: bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4",
                                                                 compress_statistics=dq),
        }, repeats)
        dequantize = interleaved_seconds({
            "ours": lambda q=same_state: dequantize_4bit(q),
            "library": lambda p=packed, s=state: bnb.dequantize_4bit(p, s),
        }, repeats)
        shape = {"shape": [size, size], "dtype": "float32", "blocksize": 64, "repeats": repeats}
        for name, seconds in (("quantize", quantize), ("dequantize", dequantize)):
            rows.append(Comparison(f"nf4 {name}{suffix}", "seconds", median(seconds["ours"]),
                                   median(seconds["library"]), GOAL, higher_is_better=False,
                                   details={**shape, "seconds": seconds},
                                   spread=spread(seconds["ours"], seconds["library"])))
    return rows


def main(argv: list[str] | None = None) -> list[Comparison]:
    return command_line(run, __doc__.split("\n")[0], "a small weight and few repeats", argv)


if __name__ == "__main__":
    main()
