"""QLoRA: LoRA adapters on a frozen base stored in 4 bits (Dettmers et al. 2023, arXiv:2305.14314).

Every linear layer of the base except the output head is kept as NF4 codes with double-quantized
scales (`ftcourse.quant`). In the forward pass a layer dequantizes its weight into the compute
dtype and multiplies; only the 4-bit copy stays in memory. Float32 LoRA adapters (`ftcourse.lora`)
sit on top and are all that trains: gradients flow through the dequantized weight to the input,
never into the 4 bits.
Library twin: transformers `BitsAndBytesConfig(load_in_4bit=True, ...)` + peft
`prepare_model_for_kbit_training` + `LoraConfig`; tests/test_qlora.py proves the forwards equal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ftcourse._surgery import freeze, match_modules, replace_modules
from ftcourse.batching import default_device
from ftcourse.lora import LoRA, LoRALinear, lora_layers, lora_state_dict, require_unadapted
from ftcourse.models import DTYPES, ensure_chat_format, ensure_distinct_pad, resolve_model_path
from ftcourse.profiles import get_profile
from ftcourse.quant import (
    CODES,
    DoubleQuant,
    Quantized4bit,
    QuantType,
    dequantize_4bit,
    from_bitsandbytes,
    quantize_4bit,
)


@dataclass(frozen=True)
class QLoRA:
    """How to fine-tune: quantize the base to 4 bits, then train LoRA adapters on top of it."""

    name: ClassVar[str] = "qlora"
    r: int = 8
    alpha: float = 16.0
    targets: str | tuple[str, ...] = "all-linear"   # the paper: all linear layers to match full FT
    dropout: float = 0.0
    quant_type: QuantType = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"                    # "bfloat16" on a GPU

    def __post_init__(self) -> None:
        self.lora  # noqa: B018  (validates r, alpha, targets and dropout with LoRA's checks)
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"QLoRA.quant_type must be 'nf4' or 'fp4' (what bitsandbytes stores), "
                             f"got {self.quant_type!r}.")
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"QLoRA.compute_dtype must be one of {sorted(DTYPES)}, "
                             f"got {self.compute_dtype!r}.")

    @property
    def lora(self) -> LoRA:
        return LoRA(r=self.r, alpha=self.alpha, targets=self.targets, dropout=self.dropout)

    def apply(self, model: nn.Module, tokenizer: Any = None) -> nn.Module:
        return apply_qlora(model, self)

    def to_peft(self) -> Any:
        return self.lora.to_peft()

    def to_bnb_config(self) -> Any:
        """The same quantization as a transformers `BitsAndBytesConfig` (whose defaults differ:
        FP4, no double quantization, float32 compute; hence every field is spelled out)."""
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=DTYPES[self.compute_dtype])


class DequantizedMatmul(torch.autograd.Function):
    """y = x W^T, with W dequantized for the forward matmul and again for the backward one.

    Autograd would otherwise keep the float W alive from forward to backward, one per layer:
    the memory QLoRA exists to save. bitsandbytes' MatMul4Bit makes the same trade.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Callable[[], Tensor]) -> Tensor:
        ctx.weight = weight
        return x @ weight().T

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, None]:
        return grad_y @ ctx.weight(), None   # the 4-bit weight itself gets no gradient


class Linear4bit(nn.Module):
    """A frozen linear layer stored in 4 bits: y = x @ dequantize(W).T + b, in the compute dtype."""

    def __init__(self, weight: Quantized4bit, bias: Tensor | None = None,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.compute_dtype = compute_dtype
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.store(weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, quant_type: QuantType = "nf4", double_quant: bool = True,
                    compute_dtype: torch.dtype = torch.float32) -> Linear4bit:
        """Quantize an `nn.Linear` (blocks of 64 over its flattened (out, in) weight)."""
        weight = quantize_4bit(linear.weight.detach(), quant_type, double_quant=double_quant)
        return cls(weight, linear.bias, compute_dtype)

    @classmethod
    def from_bitsandbytes(cls, layer: Any) -> Linear4bit:
        """The same stored bytes as a bitsandbytes `Linear4bit` (after it quantized its weight)."""
        weight = from_bitsandbytes(layer.weight.data, layer.weight.quant_state)
        return cls(weight, layer.bias, layer.compute_dtype or torch.float32)

    def store(self, q: Quantized4bit) -> None:
        """Keep `q` as buffers (so .to(device) and state_dict see them); `weight` holds the codes."""
        self.quant_type, self.blocksize, self.weight_dtype = q.quant_type, q.blocksize, q.dtype
        self.register_buffer("weight", q.packed)
        double = isinstance(q.absmax, DoubleQuant)
        self.register_buffer("absmax", q.absmax.codes if double else q.absmax)   # uint8 or float32
        self.register_buffer("absmax2", q.absmax.absmax2 if double else None)
        self.register_buffer("absmax_offset", q.absmax.offset if double else None)

    def quantized(self) -> Quantized4bit:
        scales = (self.absmax if self.absmax2 is None
                  else DoubleQuant(self.absmax, self.absmax2, self.absmax_offset))
        shape = torch.Size((self.out_features, self.in_features))
        return Quantized4bit(self.weight, scales, shape, self.weight_dtype, self.quant_type, self.blocksize)

    def dequantized_weight(self) -> Tensor:
        return dequantize_4bit(self.quantized())

    def forward(self, x: Tensor) -> Tensor:
        def weight() -> Tensor:
            return self.dequantized_weight().to(self.compute_dtype)

        y = DequantizedMatmul.apply(x.to(self.compute_dtype), weight)
        return (y if self.bias is None else y + self.bias.to(self.compute_dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        double = self.absmax2 is not None
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"quant_type={self.quant_type}, double_quant={double}, compute_dtype={self.compute_dtype}")


# ---------------------------------------------------------------- surgery

def quantize_model(model: nn.Module, quant_type: QuantType = "nf4", double_quant: bool = True,
                   compute_dtype: str = "float32") -> nn.Module:
    """Freeze `model` and replace every linear layer except the output head by a `Linear4bit`.

    Embeddings, norms and the head stay in their dtype, as bitsandbytes leaves them.
    """
    if quant_type not in CODES:
        raise ValueError(f"Unknown quant_type {quant_type!r}; choose one of {sorted(CODES)}.")
    freeze(model)
    names = match_modules(model, "all-linear")
    return replace_modules(model, names, lambda linear: Linear4bit.from_linear(
        linear, quant_type, double_quant, DTYPES[compute_dtype]))


def apply_qlora(model: nn.Module, config: QLoRA) -> nn.Module:
    """Quantize the base in place, then wrap the target layers (now 4-bit) in LoRA adapters."""
    require_unadapted(model)
    targets = match_modules(model, config.targets)   # chosen among the linear layers, before quantizing
    quantize_model(model, config.quant_type, config.double_quant, config.compute_dtype)
    return replace_modules(model, targets,
                           lambda base: LoRALinear(base, config.r, config.alpha, config.dropout))


def quantized_layers(model: nn.Module) -> dict[str, Linear4bit]:
    return {name: module for name, module in model.named_modules() if isinstance(module, Linear4bit)}


@torch.no_grad()
def merge_into_4bit(model: nn.Module) -> nn.Module:
    """Fold each adapter into its 4-bit base: W <- quantize(dequantize(W) + scaling * B A).

    Lossy: the sum is rounded back onto the 4-bit grid, and an update smaller than half a grid
    step disappears. It cannot be undone; keep the adapter if you may need it again.
    """
    names = []
    for name, layer in lora_layers(model).items():
        if isinstance(layer.base_layer, Linear4bit):
            base = layer.base_layer
            merged = base.dequantized_weight().float() + layer.delta_weight().float()
            base.store(quantize_4bit(merged.to(base.weight_dtype), base.quant_type, base.blocksize,
                                     double_quant=base.absmax2 is not None))
            names.append(name)
    return replace_modules(model, names, lambda layer: layer.base_layer)


@torch.no_grad()
def dequantize(model: nn.Module) -> nn.Module:
    """Replace each `Linear4bit` by an `nn.Linear` holding its dequantized weight, in place.

    After this, `merge_lora` is exact: the way to ship a QLoRA model as one float checkpoint.
    """
    def to_linear(layer: Linear4bit) -> nn.Linear:
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           dtype=layer.weight_dtype, device=layer.weight.device)
        linear.weight.copy_(layer.dequantized_weight())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        return linear.requires_grad_(False)

    return replace_modules(model, list(quantized_layers(model)), to_linear)


# ---------------------------------------------------------------- the library way

def load_4bit(config: QLoRA, name_or_path: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): a base model quantized by transformers + bitsandbytes on loading.

    The same call runs on a GPU (with compute_dtype="bfloat16") and, with bitsandbytes >= 0.47, on
    the CPU. `peft.prepare_model_for_kbit_training` then casts norms and embeddings to float32.
    """
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer


    source = resolve_model_path(name_or_path or get_profile().base_model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config.to_bnb_config(),
                                                 device_map={"": default_device()}, use_safetensors=True)
    ensure_chat_format(model, tokenizer)
    ensure_distinct_pad(model, tokenizer)
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), tokenizer


def load_adapters_into_peft(peft_model: Any, model: nn.Module) -> None:
    """Copy our QLoRA model's adapters into its transformers + bitsandbytes + peft twin, strictly:
    every adapter on either side must meet its counterpart. Only the adapters cross: our 4-bit
    layers keep other buffers than bitsandbytes' (`Linear4bit.from_bitsandbytes` shares its bytes)."""
    import peft

    ours = lora_state_dict(model)
    result = peft.set_peft_model_state_dict(peft_model, ours)
    theirs = [name for name in peft_model.state_dict() if ".lora_A." in name or ".lora_B." in name]
    if result.unexpected_keys or len(theirs) != len(ours):
        raise ValueError(f"The adapters do not pair up: {len(ours)} of ours, {len(theirs)} in the peft "
                         f"model, unmatched: {result.unexpected_keys[:3]}. Make both with the same QLoRA "
                         "config (QLoRA.to_peft()) on the same base model.")


def bitsandbytes_eval_error() -> float:
    """How far bitsandbytes' `Linear4bit` in eval mode, asked for float32 compute, lands from a
    float32 matmul of its own dequantized weight on this CPU (largest difference / largest output).

    About 1e-7 where it computes in float32. On CPUs with AVX512-BF16, bitsandbytes 0.50.2 repacks
    the weight at the first eval-mode forward without gradients and from then on multiplies in
    bfloat16 (~1e-3), through an op without a backward (book/bitsandbytes_report.md).
    """
    import bitsandbytes as bnb

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 128, generator=generator) * 0.02
    layer = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")                                 # bitsandbytes quantizes on the move
    x = torch.randn(3, 128, generator=generator)
    expected = x @ Linear4bit.from_bitsandbytes(layer).dequantized_weight().T
    with torch.no_grad():
        got = layer.eval()(x)
    return ((got - expected).abs().max() / expected.abs().max()).item()


__all__ = ["Linear4bit", "QLoRA", "apply_qlora", "bitsandbytes_eval_error", "dequantize", "load_4bit",
           "load_adapters_into_peft", "merge_into_4bit", "quantize_model", "quantized_layers"]
