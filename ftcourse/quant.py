"""4-bit weights from scratch: NF4, FP4 and int4 codes, blockwise absmax scaling, double quantization.

A weight is flattened, cut into blocks of 64 numbers, each block divided by its absolute maximum
(so it lies in [-1, 1]) and each number replaced by the index of the nearest of 16 code values:
4 bits, two per byte. NF4 (Dettmers et al. 2023, QLoRA, arXiv:2305.14314) puts those 16 values at
quantiles of a normal distribution, where trained weights actually are. Double quantization then
stores the 32-bit block maxima themselves in 8 bits, in blocks of 256.
Library twin: bitsandbytes.functional.quantize_4bit / dequantize_4bit / quantize_blockwise;
tests/test_quant.py proves packed bytes, block maxima and dequantized values equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

QuantType = Literal["nf4", "fp4", "int4"]

# NF4, exactly as bitsandbytes stores it (fp32). `normal_float_code()` rebuilds it from quantiles;
# recomputing in float64 lands within 1e-7 of these, so byte-equality needs the stored table.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
# FP4 (E2M1 with bitsandbytes' bias) in bit-pattern order: bit 3 is the sign, so index 8 is -0.
FP4_CODE = torch.tensor([0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                         -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]) / 12
# Plain absmax int4: round(7 x / absmax) in -7..7, evenly spaced (index 0, -8/7, is never chosen).
INT4_CODE = torch.arange(-8, 8, dtype=torch.float32) / 7
CODES: dict[str, Tensor] = {"nf4": NF4_CODE, "fp4": FP4_CODE, "int4": INT4_CODE}


def byte_table(code: Tensor) -> Tensor:
    """The two code values each of the 256 possible bytes stands for (high nibble first), shape (256,).

    Each entry is one int64 holding the bits of the two float32s, so decoding a byte is a single
    integer lookup that yields both of its values (about twice as fast as gathering float pairs).
    """
    byte = torch.arange(256)
    pairs = torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1)   # (256, 2) float32
    return pairs.view(torch.int64).reshape(256)


BYTE_TABLES: dict[str, Tensor] = {name: byte_table(code) for name, code in CODES.items()}
DEQUANTIZE_CHUNK = 1 << 19   # values per step of dequantize_4bit: 1.7x bitsandbytes' time unchunked, 1.1x so

DEFAULT_BLOCKSIZE = 64          # numbers sharing one absmax (bitsandbytes' 4-bit default)
NESTED_BLOCKSIZE = 256          # block maxima sharing one second-level absmax (double quantization)


def normal_float_code(offset: float = 0.9677083) -> Tensor:
    """NF4 rebuilt from its definition: 8 positive and 7 negative normal quantiles, plus an exact 0.

    The quantiles sit at evenly spaced probabilities between `offset` and 1/2 on each side; the
    asymmetry (8 vs 7) gives zero its own code. The result is scaled so the extremes are +-1.
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (values / values.abs().max()).float()


def dynamic_map() -> Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (Dettmers 2015), used for the double-quant step.

    Each level e = 0..6 covers magnitudes in [0.1, 1] x 10^(e-6) with 2^e evenly spaced values
    (the midpoints of 2^e equal bins), for both signs: 254 values, plus 0 and 1 = 256, sorted.
    Small magnitudes get few, widely spaced steps; magnitudes near 1 get 64 fine ones.
    """
    values: list[float] = [0.0, 1.0]
    for level in range(7):
        edges = torch.linspace(0.1, 1, 2**level + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2 * 10.0 ** (level - 6)
        values += centres.tolist() + (-centres).tolist()
    return torch.tensor(values, dtype=torch.float32).sort().values


DYNAMIC_MAP = dynamic_map()   # built once; read-only


def nearest_code(scaled: Tensor, code: Tensor) -> Tensor:
    """Index into `code` of the nearest value for each element of `scaled` (int64).

    An element exactly halfway between two code values takes the lower one, as bitsandbytes'
    kernels do (bucketize on midpoints; CUDA compares with a strict ">").
    """
    sorted_code, order = code.to(scaled.device).sort(stable=True)
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2
    ranks = torch.bucketize(scaled, midpoints)
    # NF4, int4 and the dynamic map are stored sorted, so their ranks are already the indices.
    return ranks if torch.equal(order, torch.arange(len(order), device=order.device)) else order[ranks]


def scale_blocks(x: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """Flatten `x` and divide each block of `blocksize` by its absolute maximum.

    Returns (scaled values in [-1, 1], shape (n,); absmax per block, float32, shape (ceil(n/b),)).
    A last partial block gets its own absmax, as in bitsandbytes (which multiplies full blocks by
    1/absmax and divides the tail block; we do the same so the rounding matches bit for bit).
    """
    flat = x.reshape(-1).float()
    full = flat.numel() - flat.numel() % blocksize
    blocks = flat[:full].view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp_(-1, 1).reshape(-1)
    if full < flat.numel():
        tail_absmax = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_absmax.unsqueeze(0)])
        scaled = torch.cat([scaled, (flat[full:] / tail_absmax).clamp(-1, 1)])
    return scaled, absmax


def pack_nibbles(indices: Tensor) -> Tensor:
    """Two 4-bit indices per byte, the first in the high nibble; shape (n/2, 1), uint8."""
    if indices.numel() % 2:
        raise ValueError(f"pack_nibbles needs an even number of indices, got {indices.numel()}.")
    q = indices.to(torch.uint8)
    return ((q[0::2] << 4) | q[1::2]).unsqueeze(1)


def unpack_nibbles(packed: Tensor, n: int) -> Tensor:
    """Inverse of `pack_nibbles`: the first `n` 4-bit indices, int64."""
    flat = packed.reshape(-1).long()   # widen first: uint8 stack-then-convert is ~50x slower on CPU
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]


@dataclass
class DoubleQuant:
    """Block maxima stored in 8 bits: absmax ~ dynamic_map[codes] * absmax2[block] + offset."""

    codes: Tensor        # uint8, one per first-level block
    absmax2: Tensor      # float32, one per NESTED_BLOCKSIZE first-level blocks
    offset: Tensor       # float32 scalar: the mean absmax, removed so the 8-bit code is centred
    blocksize: int = NESTED_BLOCKSIZE

    def dequantize(self) -> Tensor:
        return dequantize_blockwise(self.codes, self.absmax2, DYNAMIC_MAP.to(self.codes.device),
                                    self.blocksize) + self.offset


@dataclass
class Quantized4bit:
    """A tensor in 4 bits: packed indices, a scale per block, and what is needed to undo it."""

    packed: Tensor                      # uint8 (ceil(n/2), 1), first index in the high nibble
    absmax: Tensor | DoubleQuant        # float32 per block, or its 8-bit double quantization
    shape: torch.Size
    dtype: torch.dtype                  # of the original tensor, restored by `dequantize_4bit`
    quant_type: QuantType = "nf4"
    blocksize: int = DEFAULT_BLOCKSIZE

    def block_absmax(self) -> Tensor:
        return self.absmax.dequantize() if isinstance(self.absmax, DoubleQuant) else self.absmax

    def nbytes(self) -> int:
        """Bytes actually stored: packed codes plus scales (plus second-level scales and offset)."""
        tensors = [self.packed]
        if isinstance(self.absmax, DoubleQuant):
            tensors += [self.absmax.codes, self.absmax.absmax2, self.absmax.offset]
        else:
            tensors.append(self.absmax)
        return sum(t.numel() * t.element_size() for t in tensors)


def quantize_4bit(x: Tensor, quant_type: QuantType = "nf4", blocksize: int = DEFAULT_BLOCKSIZE,
                  double_quant: bool = False) -> Quantized4bit:
    """Blockwise absmax 4-bit quantization of any float tensor (flattened row-major).

    Args:
        x: float16, bfloat16 or float32 tensor of any shape; its size need not divide `blocksize`.
        quant_type: "nf4" (QLoRA's NormalFloat), "fp4" (bitsandbytes' E2M1) or "int4" (uniform).
        double_quant: also store the block maxima in 8 bits (QLoRA's double quantization).
    """
    if quant_type not in CODES:
        raise ValueError(f"Unknown quant_type {quant_type!r}; choose one of {sorted(CODES)}.")
    if not (isinstance(blocksize, int) and blocksize >= 2 and blocksize % 2 == 0):
        raise ValueError(f"blocksize must be a positive even int (bitsandbytes uses 64), got {blocksize!r}.")
    if not x.is_floating_point() or x.numel() == 0:
        raise ValueError(f"quantize_4bit needs a non-empty float tensor, got {x.dtype} "
                         f"of shape {tuple(x.shape)}.")
    scaled, absmax = scale_blocks(x, blocksize)
    if scaled.numel() % 2:   # an odd count: the last byte's low nibble encodes a 0.0, as in bitsandbytes
        scaled = torch.cat([scaled, scaled.new_zeros(1)])
    packed = pack_nibbles(nearest_code(scaled, CODES[quant_type]))
    scales: Tensor | DoubleQuant = double_quantize(absmax) if double_quant else absmax
    return Quantized4bit(packed, scales, x.shape, x.dtype, quant_type, blocksize)


def dequantize_4bit(q: Quantized4bit) -> Tensor:
    """code[index] * absmax[block], computed in float32 and cast back to the original dtype.

    One lookup per byte gives its two values; it runs in chunks of whole blocks of about half a
    million values, so each chunk's indices and values are still in cache when they are scaled.
    """
    n, blocksize = math.prod(q.shape), q.blocksize
    table = BYTE_TABLES[q.quant_type].to(q.packed.device)
    packed, absmax = q.packed.reshape(-1), q.block_absmax()
    values = torch.empty(2 * packed.numel(), dtype=torch.float32, device=packed.device)
    chunk = blocksize * -(-DEQUANTIZE_CHUNK // blocksize)        # values, whole blocks (blocksize is even)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        pairs = values[start:start + 2 * ((stop - start + 1) // 2)].view(torch.int64)  # 2 values a byte
        torch.index_select(table, 0, packed[start // 2:start // 2 + pairs.numel()].int(), out=pairs)
        _times_block_scale_(values[start:stop], absmax[start // blocksize:-(-stop // blocksize)], blocksize)
    return values[:n].to(q.dtype).reshape(q.shape)


def quantize_blockwise(x: Tensor, code: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """8-bit blockwise quantization with any 256-value code: (uint8 indices, float32 absmax)."""
    scaled, absmax = scale_blocks(x, blocksize)
    return nearest_code(scaled, code).to(torch.uint8).reshape(x.shape), absmax


def dequantize_blockwise(indices: Tensor, absmax: Tensor, code: Tensor, blocksize: int) -> Tensor:
    """Inverse of `quantize_blockwise`, in float32."""
    return _times_block_scale_(code[indices.reshape(-1).long()], absmax, blocksize).reshape(indices.shape)


def double_quantize(absmax: Tensor, blocksize: int = NESTED_BLOCKSIZE) -> DoubleQuant:
    """Quantize the first-level block maxima: subtract their mean, then 8-bit dynamic blockwise.

    Block maxima are all positive; centring them on 0 lets the signed 8-bit code use both halves.
    """
    offset = absmax.mean()
    codes, absmax2 = quantize_blockwise(absmax - offset, DYNAMIC_MAP, blocksize)
    return DoubleQuant(codes, absmax2, offset, blocksize)


def bits_per_parameter(blocksize: int = DEFAULT_BLOCKSIZE, double_quant: bool = False,
                       nested_blocksize: int = NESTED_BLOCKSIZE) -> float:
    """Storage per weight: 4 bits + its share of the scales (32/64 = 0.5; with double quant
    8/64 + 32/(64*256) = 0.127), the QLoRA paper's accounting (section 3)."""
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)
    return 4 + 32 / blocksize


def quantization_error(weight: Tensor, quant_type: QuantType = "nf4",
                       blocksize: int = DEFAULT_BLOCKSIZE) -> float:
    """Mean squared error of a 4-bit round trip relative to the weight's variance: 0 is perfect,
    1 is as bad as replacing every weight by the mean."""
    restored = dequantize_4bit(quantize_4bit(weight, quant_type, blocksize))
    return ((restored - weight).pow(2).mean() / weight.var()).item()


def from_bitsandbytes(packed: Tensor, state: Any) -> Quantized4bit:
    """Our view of a bitsandbytes 4-bit tensor: its packed bytes and `QuantState`, not copied."""
    scales = state.absmax
    if state.nested:
        if not torch.equal(state.state2.code.cpu(), DYNAMIC_MAP):
            raise ValueError("This QuantState's second level uses a code other than the dynamic map.")
        scales = DoubleQuant(state.absmax, state.state2.absmax, state.offset, state.state2.blocksize)
    return Quantized4bit(packed, scales, torch.Size(state.shape), state.dtype, state.quant_type,
                         state.blocksize)


# Row lengths the probe tries: bitsandbytes 0.50.2's AVX-512 dequantize kernel reads a row's block
# scales as if every row began a new block, which is wrong where a row is a multiple of 16 values
# but not of the block size (96, 160 here); 64 and 128 take the same kernel correctly, 100 its
# scalar one. book/bitsandbytes_report.md has the diagnosis and the reproduction.
PROBE_ROW_LENGTHS = (64, 96, 100, 128, 160)


def bitsandbytes_dequantize_mismatches(row_lengths: tuple[int, ...] = PROBE_ROW_LENGTHS,
                                       blocksize: int = DEFAULT_BLOCKSIZE) -> dict[int, int]:
    """{row length: values wrong} where bitsandbytes' dequantize_4bit on this CPU departs from the
    definition code[index] * absmax[block], applied to bitsandbytes' own bytes; empty where exact.

    bitsandbytes picks its native CPU kernel by the CPU's features (CPUID), so the answer is a
    property of the machine: `ftcourse doctor` reports it, and the tests expect what it finds.
    """
    import bitsandbytes.functional as bnb

    if not row_lengths or not all(isinstance(length, int) and length >= 1 for length in row_lengths):
        raise ValueError(f"row_lengths must be positive ints (values per row), got {row_lengths!r}.")
    generator = torch.Generator().manual_seed(0)
    wrong = {}
    for length in row_lengths:
        weight = torch.randn(4, length, generator=generator) * 0.02
        packed, state = bnb.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4")
        theirs = bnb.dequantize_4bit(packed, state)
        count = int((theirs != dequantize_4bit(from_bitsandbytes(packed, state))).sum())
        if count:
            wrong[length] = count
    return wrong


def _times_block_scale_(values: Tensor, absmax: Tensor, blocksize: int) -> Tensor:
    # values (n,) float32 times the absmax of the block each belongs to, in place (they are a fresh
    # lookup: no second n-sized tensor); the tail block may be short.
    full = values.numel() - values.numel() % blocksize
    values[:full].view(-1, blocksize).mul_(absmax[:full // blocksize, None])
    values[full:].mul_(absmax[-1])
    return values
