"""The memory model: the bytes per device of one training step, predicted from a config.

`estimate(config_or_model, Setup(...))` predicts the weights, gradients, optimizer states and
activations for any method, precision, optimizer, batch and ZeRO sharding: the standard
accounting (16 bytes per parameter for mixed-precision Adam, ZeRO's stages) plus an activation
model of HF Llama's backward, stated in `activation_bytes`. It knows what each method trains,
so it sits above the methods (`ftcourse.lora`, `ftcourse.prompts`, `ftcourse.methods`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from ftcourse.lora import lora_layers
from ftcourse.memory.measure import stored_bytes
from ftcourse.methods import get_method
from ftcourse.params import config_value, count_parameters, linear_shapes
from ftcourse.prompts import PromptTuningModel, SoftPromptModel

GB = 1e9   # decimal gigabytes, as the ZeRO, LoRA and QLoRA papers count


def precision_of(dtype: Any) -> str:
    """The memory model's precision for weights of `dtype` (a torch dtype or its name), trained
    without autocast: float32 and float64 count as "fp32", half types as "bf16"."""
    return "fp32" if str(dtype).removeprefix("torch.") in ("float32", "float64") else "bf16"


@dataclass(frozen=True)
class Precision:
    """Bytes per trainable parameter for its weight, gradient, fp32 master copy and each optimizer
    state; bytes per frozen weight; bytes per activation element."""

    weight: int
    gradient: int
    master: int
    state: int
    frozen: int
    activation: int


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(weight=4, gradient=4, master=0, state=4, frozen=4, activation=4),
    # ZeRO's mixed precision: bf16 weights and gradients, fp32 master weights and Adam moments.
    "bf16-mixed": Precision(weight=2, gradient=2, master=4, state=4, frozen=2, activation=2),
    # Everything in bf16, optimizer states included (torchtune's and litgpt's "bf16-true").
    "bf16": Precision(weight=2, gradient=2, master=0, state=2, frozen=2, activation=2),
}
# Optimizer states per trainable parameter: (count, bytes each; None = the precision's state bytes).
OPTIMIZERS: dict[str, tuple[int, float | None]] = {
    "adamw": (2, None), "sgd": (0, None), "sgd-momentum": (1, None),
    # bitsandbytes' 8-bit AdamW: two uint8 moments, each with an fp32 scale per block of 256
    # (tensors under 4,096 elements keep fp32 moments: `optimizer_state_bytes` counts exactly).
    "adamw-8bit": (2, 1 + 4 / 256),
}
# bitsandbytes' 8-bit optimizers (bitsandbytes/optim/optimizer.py, its defaults): a tensor with fewer
# than MIN_8BIT_SIZE elements keeps float32 states; larger ones store uint8 codes with a float32
# absmax per block of BLOCK_8BIT, decoded through two 256-entry float32 maps (qmap1 signed for the
# first moment, qmap2 unsigned for the second) that all tensors share. Its step counts are ints.
MIN_8BIT_SIZE, BLOCK_8BIT, QMAPS_8BIT = 4096, 256, 2 * 256 * 4


@dataclass(frozen=True)
class Setup:
    """How a run trains, besides the model: method, precision, optimizer, batch and sharding.

    `zero_stage` shards over `num_devices`: 1 the optimizer states, 2 also the gradients, 3 also
    the weights (ZeRO-1/2/3; FSDP's SHARD_GRAD_OP is stage 2, FULL_SHARD stage 3).
    """

    method: Any = "full"                  # a name from ftcourse.methods.METHODS or a method config
    precision: str = "fp32"
    optimizer: str = "adamw"
    batch_size: int = 1                   # sequences per device per forward pass
    seq_len: int = 512                    # tokens per sequence
    padding: bool = False                 # rows padded to the longest: an attention mask per layer
    gradient_checkpointing: bool = False
    zero_stage: int = 0
    num_devices: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"unknown precision {self.precision!r} (use one of {', '.join(PRECISIONS)})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.optimizer!r} (use one of {', '.join(OPTIMIZERS)})")
        for name in ("batch_size", "seq_len", "num_devices"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                problems.append(f"{name} must be a positive int, got {value!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        if problems:
            raise ValueError("Invalid memory Setup: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class Footprint:
    """What trains, as far as memory goes: the counts, and which activations the backward keeps."""

    tensor_sizes: tuple[int, ...]      # elements of each trainable tensor, sorted
    frozen_bytes: int                  # the frozen weights (and buffers) as stored
    embeddings_train: bool = False
    norms_train: bool = False
    head_trains: bool = False
    saved_inputs: frozenset[str] = frozenset()   # linear layers whose input the backward keeps
    lora_r: int = 0
    lora_targets: frozenset[str] = frozenset()
    lora_dropout: bool = False
    prompt_tokens: int = 0             # prompt tuning: virtual tokens in every layer
    prefix_tokens: int = 0             # prefix tuning: extra keys and values in every layer
    quantized: bool = False            # 4-bit linear layers, dequantized one at a time

    @property
    def trainable(self) -> int:
        """Trainable parameters."""
        return sum(self.tensor_sizes)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes per device of one training step, itemised.

    The peak comes at the start of the backward pass (every saved activation and the loss's
    temporaries), inside a layer's backward (with gradient checkpointing: the last layer rebuilt,
    with nearly every gradient already there), or at its end (every gradient).
    """

    weights: float
    gradients: float
    optimizer: float
    activations: float                 # kept for the backward (with checkpointing: the head only)
    checkpoints: float                 # the layer inputs gradient checkpointing keeps instead
    recompute: float                   # one layer's activations, rebuilt in the backward
    backward: float                    # temporaries of one layer's backward (and dequantization)
    loss: float                        # the logits' log-probabilities and gradients at the peak
    setup: Setup
    footprint: Footprint

    @property
    def peak(self) -> float:
        """The largest of the three moments, plus what is held throughout (weights, optimizer)."""
        return sum(self.peak_moment()[1].values())

    def peak_moment(self) -> tuple[str, dict[str, float]]:
        """(when the step peaks, {term: bytes held then}): the terms that `peak` adds up.

        The weights, optimizer states and checkpoints are held throughout; on top of them the peak is
        the largest of three moments: the start of the backward, inside one layer's backward, its end.
        """
        in_a_layer = {"activations": self.activations, "recompute": self.recompute, "backward": self.backward,
                      "gradients": self.gradients if self.setup.gradient_checkpointing else 0.0}
        moments = {"at the start of the backward": {"activations": self.activations, "loss": self.loss},
                   "inside a layer's backward": in_a_layer,
                   "at the end of the backward": {"gradients": self.gradients}}
        moment = max(moments, key=lambda name: sum(moments[name].values()))
        held = {"weights": self.weights, "optimizer": self.optimizer, "checkpoints": self.checkpoints,
                **moments[moment]}
        return moment, {term: size for term, size in held.items() if size}

    def as_dict(self, unit: float = 1.0) -> dict[str, float]:
        items = {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                 "activations": self.activations, "checkpoints": self.checkpoints,
                 "recompute": self.recompute, "backward": self.backward, "loss": self.loss,
                 "peak": self.peak}
        return {name: value / unit for name, value in items.items()}

    def __str__(self) -> str:
        unit, name = (GB, "GB") if self.peak >= GB else (1e6, "MB")
        rows = [f"  {k:<12}{v:>10.2f} {name}" for k, v in self.as_dict(unit).items() if v or k == "peak"]
        return "\n".join(["Predicted memory per device of one training step:", *rows])


def model_state_bytes(trainable: float, frozen_bytes: float, setup: Setup,
                      tensor_sizes: Sequence[int] = ()) -> dict[str, float]:
    """Bytes per device of the weights, gradients and optimizer states (ZeRO's model states).

    The optimizer states cost OPTIMIZERS' bytes per trainable parameter; given the trainable
    tensors' sizes (they add up to `trainable`), they are counted exactly instead.
    """
    precision = PRECISIONS[setup.precision]
    count, each = OPTIMIZERS[setup.optimizer]
    states = (optimizer_state_bytes(tensor_sizes, setup) if tensor_sizes
              else trainable * count * (precision.state if each is None else each))
    optimizer = trainable * precision.master + states
    weights = trainable * precision.weight + frozen_bytes
    gradients = trainable * precision.gradient
    shards = setup.num_devices
    return {"weights": weights / shards if setup.zero_stage >= 3 else weights,
            "gradients": gradients / shards if setup.zero_stage >= 2 else gradients,
            "optimizer": optimizer / shards if setup.zero_stage >= 1 else optimizer}


def optimizer_state_bytes(tensor_sizes: Sequence[int], setup: Setup) -> int:
    """Bytes of the optimizer's states for trainable tensors of `tensor_sizes` elements, as torch
    and bitsandbytes allocate them (without a mixed-precision master copy).

    torch's AdamW keeps two moments in the weight's dtype and a float32 step per tensor; SGD with
    momentum one buffer. bitsandbytes' AdamW8bit: see MIN_8BIT_SIZE above.
    """
    count, _ = OPTIMIZERS[setup.optimizer]
    if setup.optimizer == "adamw-8bit":
        large = [n for n in tensor_sizes if n >= MIN_8BIT_SIZE]
        small = sum(tensor_sizes) - sum(large)
        return (2 * 4 * small + sum(2 * (n + 4 * math.ceil(n / BLOCK_8BIT)) for n in large)
                + QMAPS_8BIT * bool(large))
    steps = 4 * len(tensor_sizes) if setup.optimizer == "adamw" else 0
    return count * PRECISIONS[setup.precision].state * sum(tensor_sizes) + steps


def estimate(model: Any, setup: Setup = Setup()) -> MemoryEstimate:
    """Predicted peak memory of one training step of `model` (a config, or a model with the
    method already applied, whose own parameters are then counted) under `setup`."""
    if isinstance(model, nn.Module):
        footprint, config = footprint_of_model(model), model.config
    else:
        footprint, config = footprint_of_config(model, setup), model
    states = model_state_bytes(footprint.trainable, footprint.frozen_bytes, setup,
                               footprint.tensor_sizes)
    return MemoryEstimate(**states, **activation_bytes(config, footprint, setup), setup=setup,
                          footprint=footprint)


def footprint_of_config(config: Any, setup: Setup) -> Footprint:
    """What `setup.method` trains on a Llama-family model, counted from its config alone."""
    method = get_method(setup.method)
    get = partial(config_value, config)
    L, D = get("num_hidden_layers"), get("hidden_size")
    shapes = linear_shapes(config)
    counts = count_parameters(config)
    precision = PRECISIONS[setup.precision]
    head_dim = get("head_dim") or D // get("num_attention_heads")
    buffers = 2 * (head_dim // 2) * 4          # the rotary inverse frequencies (and a copy), float32
    frozen = counts.total * precision.frozen + buffers
    if method.name == "full":
        weights = [d_in * d_out for d_in, d_out in shapes.values()]
        biases = [counts.per_layer[name] - d_in * d_out for name, (d_in, d_out) in shapes.items()]
        layer = weights + [b for b in biases if b] + [D, D]              # and the two norms
        head = [counts.lm_head] if counts.lm_head else []              # untied
        sizes = L * layer + [counts.embeddings, D] + head
        return Footprint(tuple(sorted(sizes)), buffers, embeddings_train=True, norms_train=True,
                         head_trains=True, saved_inputs=frozenset(shapes))
    if method.name in ("lora", "qlora"):
        lora = method.lora if method.name == "qlora" else method
        if isinstance(lora.targets, str) and lora.targets != "all-linear":
            raise ValueError("The memory model counts LoRA targets given as names or 'all-linear'; for "
                             "a regex, apply the method to a model and pass the model.")
        targets = frozenset(shapes if lora.targets == "all-linear" else lora.targets)
        if unknown := sorted(targets - set(shapes)):
            raise ValueError(f"LoRA targets {unknown} match no linear layer of a Llama-family layer; "
                             f"available: {', '.join(shapes)}. Fix LoRA.targets.")
        if method.name == "qlora":
            linear = {name: d_in * d_out for name, (d_in, d_out) in shapes.items()}
            packed = sum(stored_4bit_bytes(n, method.double_quant) for n in linear.values())
            frozen = L * packed + (counts.total - L * sum(linear.values())) * precision.frozen + buffers
        sizes = L * [lora.r * size for name in targets for size in shapes[name]]   # A, B
        return Footprint(tuple(sorted(sizes)), frozen, saved_inputs=targets, lora_r=lora.r,
                         lora_targets=targets, lora_dropout=lora.dropout > 0,
                         quantized=method.name == "qlora")
    if method.name == "prompt_tuning":
        return Footprint((method.num_virtual_tokens * D,), frozen, prompt_tokens=method.num_virtual_tokens)
    if method.name == "prefix_tuning":
        kv = 2 * L * shapes["k_proj"][1]                       # keys and values of every layer
        n, width, k = method.num_virtual_tokens, method.projection_dim, shapes["k_proj"][1]
        # Without an MLP the prefix itself; with one, a key-sized row per token and the MLP.
        sizes = [n * k, k * width, width, width * kv, kv] if width else [n * kv]
        return Footprint(tuple(sorted(sizes)), frozen, prefix_tokens=n)
    raise ValueError(f"The memory model counts full, lora, qlora, prompt_tuning and prefix_tuning from a "
                     f"config; for {method.name!r}, apply it to a model and pass the model.")


def stored_4bit_bytes(numel: int, double_quant: bool, blocksize: int = 64, nested: int = 256) -> int:
    """Bytes of one 4-bit weight as bitsandbytes (and ftcourse.qlora) store it: packed codes and
    the block scales, fp32 or 8-bit with an fp32 scale per `nested` blocks and an fp32 offset."""
    blocks = math.ceil(numel / blocksize)
    scales = blocks + 4 * math.ceil(blocks / nested) + 4 if double_quant else 4 * blocks
    return math.ceil(numel / 2) + scales


def footprint_of_model(model: nn.Module) -> Footprint:
    """What trains in a model with its method applied, counted from its own parameters."""
    base = model.base_model if isinstance(model, SoftPromptModel) else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    suffix = {name: name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    loras = lora_layers(model)
    weights_train = {suffix[name] for name, module in model.named_modules() if isinstance(module, nn.Linear)
                     and module.weight.requires_grad and suffix[name] in linear_shapes(model.config)}
    targets = frozenset(suffix[name] for name in loras)
    norms = [p for name, p in model.named_parameters() if "norm" in name]
    soft = model.num_virtual_tokens if isinstance(model, SoftPromptModel) else 0
    prompt = isinstance(model, PromptTuningModel)
    return Footprint(
        tensor_sizes=tuple(sorted(p.numel() for p in trainable)),
        frozen_bytes=stored_bytes(model, trainable=False),
        embeddings_train=base.get_input_embeddings().weight.requires_grad,
        norms_train=any(p.requires_grad for p in norms),
        head_trains=base.get_output_embeddings().weight.requires_grad,
        saved_inputs=frozenset(weights_train) | targets,
        lora_r=max((layer.r for layer in loras.values()), default=0), lora_targets=targets,
        lora_dropout=any(isinstance(layer.lora_dropout, nn.Dropout) for layer in loras.values()),
        prompt_tokens=soft if prompt else 0, prefix_tokens=0 if prompt else soft,
        quantized=any(type(module).__name__ == "Linear4bit" for module in model.modules()))


def activation_bytes(config: Any, footprint: Footprint, setup: Setup) -> dict[str, float]:
    """Bytes of the activations the backward pass keeps, and of the loss's temporaries.

    Per layer and token, HF Llama's backward keeps (a = activation bytes, 4 for fp32 terms):
    each RMSNorm's fp32 input and 1/rms (4D + 4), and its normalised output if the norm weight
    trains (aD); the input of each linear layer whose weight or LoRA trains (aD for q/k/v,
    aD for gate/up, aF for down; o_proj's input is the attention output, already kept); the
    attention's q, k, v, output (a(2H + 2K)hd) and log-sum-exp (4H); the FFN's gate, SiLU and up
    outputs (3aF); each LoRA's A output (ar). With an attention mask (padded rows, or a prefix
    that the keys see beyond the queries) torch's CPU attention takes the mask as a float32
    tensor (4 T_keys per token) and k, v are repeated to all H heads. The first layer's input is
    kept only if gradients flow into it (trained embeddings or a soft prompt). The head keeps the
    final norm's terms and its input if it trains. The loss keeps fp32 log-probabilities of
    B(T-1)V and, at the start of the backward, their gradient and the logits' gradient:
    3 * 4 B(T-1)V. Inside a layer's backward the gradients of the FFN's gate and up outputs
    (2aF) live beside its saved tensors, and a 4-bit layer's weight dequantized to float32 and
    cast to the compute dtype ((4 + a) d_in d_out, the largest layer). With gradient checkpointing each
    layer keeps only its input (aD) and one layer is rebuilt at a time.
    """
    get = partial(config_value, config)
    D, F, L, V = get("hidden_size"), get("intermediate_size"), get("num_hidden_layers"), get("vocab_size")
    shapes = linear_shapes(config)
    q_width, kv_width = shapes["q_proj"][1], shapes["k_proj"][1]
    heads = get("num_attention_heads")
    a = PRECISIONS[setup.precision].activation
    B, T = setup.batch_size, setup.seq_len
    positions = T + footprint.prompt_tokens                         # a soft prompt runs through every layer
    keys = positions + footprint.prefix_tokens                      # a prefix adds keys and values only
    saved = footprint.saved_inputs
    norm_input = 4 * D + 4
    lora = sum(a * footprint.lora_r + (a + 1) * shapes[name][0] * footprint.lora_dropout
               for name in footprint.lora_targets)
    per_token = (2 * norm_input + 2 * a * D * footprint.norms_train
                 + a * D * bool(saved & {"q_proj", "k_proj", "v_proj"})
                 + a * D * bool(saved & {"gate_proj", "up_proj"}) + a * F * ("down_proj" in saved)
                 + a * 2 * q_width + 4 * heads + 3 * a * F + lora)
    masked = setup.padding or footprint.prefix_tokens > 0
    keys_width = q_width if masked else kv_width                  # GQA heads repeated under a mask
    layer = per_token * B * positions + (a * 2 * keys_width + 4 * positions * masked) * B * keys
    first_input = norm_input * B * positions * (footprint.embeddings_train or footprint.prompt_tokens > 0)
    head = (norm_input + a * D * (footprint.norms_train + footprint.head_trains)) * B * positions
    dequantized = (4 + a) * max(d_in * d_out for d_in, d_out in shapes.values()) * footprint.quantized
    terms = {"loss": float(3 * 4 * B * (T - 1) * V),
             "backward": float(2 * a * F * B * positions + dequantized)}
    if not setup.gradient_checkpointing:
        layers = L * layer - (norm_input * B * positions - first_input)
        return {**terms, "activations": float(layers + head), "checkpoints": 0.0, "recompute": 0.0}
    if footprint.prefix_tokens:
        raise ValueError("Prefix tuning cannot use gradient checkpointing: transformers turns the "
                         "key/value cache off under it, and the prefix lives in that cache.")
    return {**terms, "activations": float(head), "checkpoints": float(L * a * D * B * positions),
            "recompute": float(layer)}
