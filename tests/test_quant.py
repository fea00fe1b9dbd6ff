"""NF4 / FP4 / int4 and double quantization from scratch, checked against bitsandbytes byte for byte."""

import math

import bitsandbytes.functional as bnb_functional
import pytest
import torch
from known_defects import DEQUANTIZE_MISMATCHES, dequantize_defect, dequantize_is_wrong_for

from ftcourse import quant
from ftcourse.tolerance import assert_close

# Two-dimensional like real weights: whole blocks, a partial tail block, an odd number of values.
SHAPES = [(64, 96), (37, 64), (5, 91), (7, 9)]
# Where bitsandbytes' AVX-512 dequantize was found wrong (tests/known_defects.py), and where it was
# found right, on the machine that found it: every one is checked against the definition everywhere.
WRONG_ON_AVX512 = [(32, 96), (2, 96), (4096, 32)]
RIGHT_ON_AVX512 = [(64, 64), (10, 64), (64, 192), (64, 100), (96, 64), (128, 384), (384, 128),
                   (64, 128), (6144,), (1, 6144), (48, 128), (3, 64)]
ALL_SHAPES = SHAPES + WRONG_ON_AVX512 + RIGHT_ON_AVX512
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def bnb_quantize(x, quant_type, double_quant=False):
    return bnb_functional.quantize_4bit(x, blocksize=64, quant_type=quant_type,
                                        compress_statistics=double_quant)


def weights(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def test_codes_are_bitsandbytes_tables():
    assert torch.equal(quant.NF4_CODE, bnb_functional.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(quant.FP4_CODE, bnb_functional.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(quant.dynamic_map(), bnb_functional.create_dynamic_map())


def test_nf4_is_built_from_normal_quantiles():
    rebuilt = quant.normal_float_code()
    # float64 quantiles land within one float32 ulp of the stored table; 0 and +-1 are exact.
    assert (rebuilt - quant.NF4_CODE).abs().max() <= 1.2e-7
    assert rebuilt[7] == 0 and rebuilt[0] == -1 and rebuilt[15] == 1
    assert (quant.NF4_CODE < 0).sum() == 7 and (quant.NF4_CODE > 0).sum() == 8


@pytest.mark.equivalence
@pytest.mark.parametrize("shape", ALL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nf4_bytes_equal_bitsandbytes(shape, dtype):
    x = weights(shape, dtype)
    packed, state = bnb_quantize(x, "nf4")
    ours = quant.quantize_4bit(x, "nf4", blocksize=64)
    assert torch.equal(ours.packed, packed)                        # same bytes, same nibble order
    assert torch.equal(ours.absmax, state.absmax)


def definition(packed, absmax, code, shape, dtype, blocksize=64):
    """Dequantization as written down: value i is code[nibble i] * absmax[i // blocksize], computed
    in float32 and cast to the original dtype (as bitsandbytes does), one element at a time."""
    n = math.prod(shape)
    flat = packed.flatten().long()
    nibbles = torch.stack([flat >> 4, flat & 0xF], dim=1).flatten()[:n]   # high nibble first
    return (code[nibbles] * absmax[torch.arange(n) // blocksize]).to(dtype).reshape(shape)


def assert_dequantize_is_the_definition(x, quant_type):
    """Ours, on bitsandbytes' bytes and scales, equals the definition with bitsandbytes' code table:
    bit for bit, since both are one float32 product per value, rounded once to the dtype."""
    packed, state = bnb_quantize(x, quant_type)
    code = bnb_functional.get_4bit_type(quant_type, device="cpu")
    expected = definition(packed, state.absmax, code, x.shape, x.dtype)
    assert torch.equal(quant.dequantize_4bit(quant.from_bitsandbytes(packed, state)), expected)


@pytest.mark.equivalence
@pytest.mark.parametrize("shape", ALL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_is_the_definition(shape, dtype, quant_type):
    assert_dequantize_is_the_definition(weights(shape, dtype), quant_type)


# Every non-zero code value (a zero's one-ulp neighbour is a denormal that no block scale keeps).
NONZERO_CODES = [(kind, i) for kind in ("nf4", "fp4") for i in range(16) if quant.CODES[kind][i] != 0]


@pytest.mark.parametrize("quant_type, index", NONZERO_CODES)
def test_a_one_ulp_error_in_any_code_value_fails_the_definition_test(monkeypatch, quant_type, index):
    code = quant.CODES[quant_type].clone()
    code[index] = torch.nextafter(code[index], torch.tensor(2.0))
    monkeypatch.setitem(quant.BYTE_TABLES, quant_type, quant.byte_table(code))
    with pytest.raises(AssertionError):
        assert_dequantize_is_the_definition(weights((64, 96), torch.float32), quant_type)


@pytest.mark.equivalence
@pytest.mark.parametrize("shape", [pytest.param(shape, marks=dequantize_defect(shape[-1]))
                                   for shape in ALL_SHAPES])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantized_values_equal_bitsandbytes(shape, dtype, quant_type):
    x = weights(shape, dtype, seed=1)
    packed, state = bnb_quantize(x, quant_type)
    ours = quant.quantize_4bit(x, quant_type)
    theirs = bnb_functional.dequantize_4bit(packed, state)
    # bitsandbytes' native CPU kernel returns a 1-D tensor's values in shape (1, n), its other paths
    # in the tensor's shape; the values are what this test compares.
    assert theirs.numel() == x.numel()
    # FP4 has two codes for zero (+0 and -0): compare what they decode to, not the nibbles.
    assert torch.equal(quant.dequantize_4bit(ours), theirs.reshape(shape))


def test_the_dequantize_probe_rejects_bad_row_lengths():
    with pytest.raises(ValueError, match=r"row_lengths must be positive ints .*got \(96, 0\)"):
        quant.bitsandbytes_dequantize_mismatches((96, 0))


def test_the_dequantize_probe_finds_exactly_the_diagnosed_rows():
    """The probe finds no wrong values, or wrong values in exactly the rows the diagnosis names."""
    wrong_rows = {length for length in quant.PROBE_ROW_LENGTHS if dequantize_is_wrong_for(length)}
    assert set(DEQUANTIZE_MISMATCHES) == wrong_rows
    assert not DEQUANTIZE_MISMATCHES or wrong_rows == {96, 160}


@pytest.mark.equivalence
def test_real_weights_of_the_base_model_quantize_identically(base):
    model, _ = base
    for name, parameter in model.named_parameters():
        if parameter.dim() == 2:
            packed, state = bnb_quantize(parameter.data, "nf4")
            ours = quant.quantize_4bit(parameter.data, "nf4")
            assert torch.equal(ours.packed, packed), name
            assert torch.equal(ours.absmax, state.absmax), name


def reference_quantize_blockwise(x, code, blocksize):
    """bitsandbytes' own PyTorch kernel for 8-bit blockwise quantization (the one its CUDA
    rounding rule is written down in), reached past the native CPU kernel that overrides it."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    return op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd),
                         x, code, blocksize)


@pytest.mark.equivalence
def test_double_quant_equals_bitsandbytes_reference_kernel(base):
    model, _ = base
    absmax = quant.scale_blocks(model.model.layers[0].mlp.down_proj.weight.data, 64)[1]
    ours = quant.double_quantize(absmax)
    codes, absmax2 = reference_quantize_blockwise(absmax - absmax.mean(), quant.dynamic_map(), 256)
    assert torch.equal(ours.codes, codes) and torch.equal(ours.absmax2, absmax2)


@pytest.mark.equivalence
@pytest.mark.parametrize("shape", [(256, 128), (384, 128), (37, 64)])
def test_double_quant_state_matches_bitsandbytes_cpu(shape):
    x = weights(shape, torch.float32, seed=2)
    packed, state = bnb_quantize(x, "nf4", double_quant=True)
    ours = quant.quantize_4bit(x, "nf4", double_quant=True)
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.absmax.offset, state.offset)
    assert torch.equal(ours.absmax.absmax2, state.state2.absmax)
    # bitsandbytes' native CPU kernel finds the nearest 8-bit code through a 65,536-entry lookup
    # table, so a value within one table step (2/65535) of a midpoint may round the other way.
    differ = ours.absmax.codes != state.absmax
    if differ.any():
        code = quant.dynamic_map()
        scaled = quant.scale_blocks(quant.scale_blocks(x, 64)[1] - state.offset, 256)[0][differ]
        lower, upper = torch.minimum(ours.absmax.codes, state.absmax)[differ].long(), \
            torch.maximum(ours.absmax.codes, state.absmax)[differ].long()
        assert torch.equal(upper - lower, torch.ones_like(upper))
        assert ((scaled - (code[lower] + code[upper]) / 2).abs() <= 2 / 65535).all()
    assert differ.float().mean() <= 0.01


@pytest.mark.equivalence
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_of_double_quantized_bitsandbytes_state_is_exact(quant_type):
    x = weights((300, 64), torch.bfloat16, seed=3)
    packed, state = bnb_quantize(x, quant_type, double_quant=True)
    ours = quant.from_bitsandbytes(packed, state)
    assert torch.equal(quant.dequantize_4bit(ours), bnb_functional.dequantize_4bit(packed, state))


def test_int4_is_absmax_rounding_to_sevenths():
    x = weights((16, 64), torch.float32, seed=4)
    absmax = x.view(-1, 64).abs().amax(dim=1, keepdim=True)
    expected = (torch.round(x.view(-1, 64) / absmax * 7) / 7 * absmax).view_as(x)
    # k / 7 rounded once, times absmax rounded once: two roundings either way.
    assert_close(quant.dequantize_4bit(quant.quantize_4bit(x, "int4")), expected, n=2)


def test_nf4_has_the_smallest_error_on_normal_weights():
    x = weights((512, 512), torch.float32, seed=5)
    errors = {kind: quant.quantization_error(x, kind) for kind in ("nf4", "fp4", "int4")}
    assert errors["nf4"] < errors["fp4"] and errors["nf4"] < errors["int4"]


@pytest.mark.equivalence
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_quantization_error_is_the_bitsandbytes_round_trip_error(quant_type):
    x = weights((256, 128), torch.float32, seed=6)
    packed, state = bnb_functional.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    theirs = ((bnb_functional.dequantize_4bit(packed, state) - x).pow(2).mean() / x.var()).item()
    # Two float32 means over the 32,768 values (the error's and the variance's).
    assert_close(quant.quantization_error(x, quant_type), theirs, n=2 * x.numel(), dtype=torch.float32)


def test_bits_per_parameter_match_the_qlora_paper():
    plain, double = quant.bits_per_parameter(), quant.bits_per_parameter(double_quant=True)
    assert plain == 4.5 and double == pytest.approx(4.127, abs=5e-4)
    assert plain - double == pytest.approx(0.373, abs=5e-4)
    x = weights((1024, 1024), torch.float32)
    for double_quant, bits in ((False, plain), (True, double)):
        stored = quant.quantize_4bit(x, "nf4", double_quant=double_quant).nbytes()
        assert stored * 8 == pytest.approx(bits * x.numel(), abs=32)   # + the 4-byte offset


def test_nibble_order_is_high_first():
    packed = quant.pack_nibbles(torch.tensor([1, 2, 15, 0]))
    assert packed.flatten().tolist() == [0x12, 0xF0]
    assert quant.unpack_nibbles(packed, 3).tolist() == [1, 2, 15]


def test_bad_input_is_named():
    x = torch.randn(8, 8)
    with pytest.raises(ValueError, match="Unknown quant_type 'nf3'"):
        quant.quantize_4bit(x, "nf3")
    with pytest.raises(ValueError, match="blocksize"):
        quant.quantize_4bit(x, blocksize=0)
    with pytest.raises(ValueError, match="float tensor"):
        quant.quantize_4bit(torch.ones(4, dtype=torch.int64))
