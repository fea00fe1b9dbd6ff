"""Adapters between frozen layers: bottleneck adapters (Houlsby et al. 2019) and IA3 (Liu et al. 2022).

A bottleneck adapter adds a small MLP to a layer's output, h + up(act(down(h))), with
down: d -> d / reduction_factor; placed after the attention output and the FFN output of every
block it is the article's "small trainable layers between frozen layers". IA3 learns one scaling
vector per adapted layer: the output of k and v, the input of the FFN's down projection.
Library twins: IA3 is peft's `IA3Config` (tests/test_adapters.py proves the logits equal);
bottleneck adapters are not in peft (adapter-hub's `DoubleSeqBnConfig` is the reference design).
Shapes: x (..., d_in) -> (..., d_out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ftcourse._surgery import freeze, match_modules, replace_modules


@dataclass(frozen=True)
class BottleneckAdapter:
    """How to fine-tune: a residual bottleneck MLP after each target layer; the rest frozen."""

    name: ClassVar[str] = "adapter"
    reduction_factor: int = 16
    targets: tuple[str, ...] = ("o_proj", "down_proj")   # after attention and after the FFN (Houlsby)

    def __post_init__(self) -> None:
        if not (isinstance(self.reduction_factor, int) and self.reduction_factor >= 1):
            raise ValueError(f"BottleneckAdapter.reduction_factor must be a positive int, "
                             f"got {self.reduction_factor!r}.")

    def apply(self, model: nn.Module, tokenizer: Any = None) -> nn.Module:
        names = match_modules(model, self.targets)
        freeze(model)
        return replace_modules(model, names, lambda base: AdapterLinear(base, self.reduction_factor))


class AdapterLinear(nn.Module):
    """base(x) + up(silu(down(base(x)))): a frozen layer followed by a trainable bottleneck."""

    def __init__(self, base_layer: nn.Linear, reduction_factor: int):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        d = base_layer.out_features
        bottleneck = max(1, d // reduction_factor)
        self.down = nn.Linear(d, bottleneck, dtype=torch.float32, device=base_layer.weight.device)
        self.up = nn.Linear(bottleneck, d, dtype=torch.float32, device=base_layer.weight.device)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)      # up = 0: the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.base_layer(x)
        return (h + self.up(nn.functional.silu(self.down(h.float())))).to(h.dtype)


@dataclass(frozen=True)
class IA3:
    """How to fine-tune: learn a scaling vector per target layer (initialised to ones)."""

    name: ClassVar[str] = "ia3"
    targets: tuple[str, ...] = ("k_proj", "v_proj", "down_proj")
    feedforward: tuple[str, ...] = ("down_proj",)   # these scale their input; the others their output

    def __post_init__(self) -> None:
        if unknown := set(self.feedforward) - set(self.targets):
            raise ValueError(f"IA3.feedforward names {sorted(unknown)}, which are not in targets "
                             f"{self.targets}.")

    def apply(self, model: nn.Module, tokenizer: Any = None) -> nn.Module:
        names = match_modules(model, self.targets)
        freeze(model)
        for name in names:
            feedforward = any(name == t or name.endswith("." + t) for t in self.feedforward)
            replace_modules(model, [name], lambda base, ff=feedforward: IA3Linear(base, ff))
        return model

    def to_peft(self) -> Any:
        import peft

        return peft.IA3Config(task_type="CAUSAL_LM", target_modules=list(self.targets),
                              feedforward_modules=list(self.feedforward))


class IA3Linear(nn.Module):
    """base(x) * l (keys, values), or base(x * l) (the FFN's down projection)."""

    def __init__(self, base_layer: nn.Linear, feedforward: bool):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.feedforward = feedforward
        size = base_layer.in_features if feedforward else base_layer.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=base_layer.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        if self.feedforward:
            return self.base_layer(x * self.ia3_l.to(x.dtype))
        return self.base_layer(x) * self.ia3_l.to(x.dtype)


PEFT_PREFIX = "base_model.model."


def to_peft_state(model: nn.Module) -> dict[str, Tensor]:
    """Every weight of our IA3 model under the name and shape peft's model gives it (its vectors
    (out, 1) for outputs, (1, in) for the FFN's input): `peft_model.load_state_dict(
    to_peft_state(ours), strict=True)` loads them all."""
    feedforward = {name for name, layer in model.named_modules() if isinstance(layer, IA3Linear)
                   and layer.feedforward}
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".ia3_l"):
            layer = name.removesuffix(".ia3_l")
            tensor = tensor[None, :] if layer in feedforward else tensor[:, None]
            name += ".default"
        state[PEFT_PREFIX + name] = tensor
    return state


def from_peft_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A peft IA3 model's state under our names and shapes: `ours.load_state_dict(from_peft_state(
    peft_model.state_dict()), strict=True)`."""
    return {name.removeprefix(PEFT_PREFIX).removesuffix(".default"):
            tensor.reshape(-1) if name.endswith(".ia3_l.default") else tensor
            for name, tensor in state.items()}


__all__ = ["IA3", "AdapterLinear", "BottleneckAdapter", "IA3Linear", "from_peft_state", "to_peft_state"]
