"""LoRA: low-rank adaptation of linear layers (Hu et al. 2021, arXiv:2106.09685).

h = W0 x + (alpha / r) * B A x,  A: (r, d_in) Kaiming-uniform,  B: (d_out, r) zeros.
W0 stays frozen; only A and B train, r * (d_in + d_out) numbers instead of d_in * d_out. With B = 0
a fresh adapter changes nothing; `merge()` folds B A into W0 for inference at no extra cost.
Library twin: peft.LoraConfig + peft.get_peft_model; tests/test_lora.py proves them equal, and
`save_adapter` / `load_adapter` read and write peft's file format.
Shapes: x (..., d_in) -> h (..., d_out). Here B is the LoRA matrix, never the batch size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ftcourse._surgery import freeze, match_modules, replace_modules

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAGNITUDE = "lora_magnitude_vector"          # peft's name for DoRA's row lengths
# A LoRA layer's parameters under our names and in a peft model (adapter "default").
PEFT_NAMES = {".lora_A.weight": ".lora_A.default.weight", ".lora_B.weight": ".lora_B.default.weight",
              ".magnitude": f".{MAGNITUDE}.default.weight"}
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRA:
    """How to fine-tune: low-rank updates on the named linear layers, everything else frozen."""

    name: ClassVar[str] = "lora"
    r: int = 8
    alpha: float = 16.0
    targets: str | tuple[str, ...] = ("q_proj", "v_proj")   # names, a regex, or "all-linear"
    dropout: float = 0.0
    rslora: bool = False                                     # scale by alpha / sqrt(r)
    dora: bool = False                                       # learn each row's length apart (DoRA)
    init: str = "default"                                    # or "pissa": A, B from W0's top singular vectors

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.r, int) and self.r >= 1):
            problems.append(f"r must be a positive int, got {self.r!r}")
        if not self.alpha > 0:
            problems.append(f"alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            problems.append("targets must name at least one module")
        if self.init not in ("default", "pissa"):
            problems.append(f"init must be 'default' or 'pissa', got {self.init!r}")
        if self.init == "pissa" and self.dora:
            problems.append("init='pissa' with dora=True is not supported; choose one")
        if problems:
            raise ValueError("Invalid LoRA config: " + "; ".join(problems) + ".")
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    def apply(self, model: nn.Module, tokenizer: Any = None) -> nn.Module:
        return apply_lora(model, self)

    def to_peft(self) -> Any:
        """The same configuration as a `peft.LoraConfig`."""
        import peft  # imported here so `import ftcourse` works without peft

        targets = self.targets if isinstance(self.targets, str) else list(self.targets)
        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=targets,
                               lora_dropout=self.dropout, use_rslora=self.rslora, use_dora=self.dora,
                               init_lora_weights=True if self.init == "default" else self.init,
                               bias="none", task_type="CAUSAL_LM")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: base(x) + scaling * B(A(dropout(x)))."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.scaling = r, alpha / math.sqrt(r) if rslora else alpha / r
        # Half-precision and 4-bit bases get float32 adapters, as peft does (autocast_adapter_dtype).
        dtype = base_layer.weight.dtype if base_layer.weight.dtype in (torch.float32, torch.float64) \
            else torch.float32
        device = base_layer.weight.device
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))   # U(-1/sqrt(d_in), 1/sqrt(d_in))
        nn.init.zeros_(self.lora_B.weight)                              # no change at the start
        self.merged = False
        self.disabled = False
        self.pissa = False          # True once init_pissa moved W0's principal part into B A

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return (result + update * self.scaling).to(result.dtype)

    @torch.no_grad()
    def init_pissa(self) -> None:
        """PiSSA (Meng et al. 2024, arXiv:2404.02948): B A starts as the r largest singular directions
        of W0 (its principal part, U_r S_r V_r^T, split as sqrt(S_r / scaling) on each side) and the
        frozen base keeps the rest, W0 - scaling * B A: the same outputs, but training starts on the
        directions that matter most instead of from zero."""
        weight = self.base_layer.weight
        if not weight.is_floating_point():
            raise TypeError("PiSSA needs a float base layer to take the SVD of (as peft does); initialise "
                            "on the float model, then quantize the residual base.")
        U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
        root = torch.sqrt(S[:self.r] / self.scaling)
        self.lora_A.weight.copy_(torch.diag(root) @ Vh[:self.r])
        self.lora_B.weight.copy_(U[:, :self.r] @ torch.diag(root))
        residual = weight.float() - self.scaling * self.lora_B.weight @ self.lora_A.weight
        weight.copy_(residual.to(weight.dtype))
        self.pissa = True

    def delta_weight(self) -> Tensor:
        """scaling * B A, the (d_out, d_in) change this adapter makes to W0."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + scaling * B A: the same outputs with one matmul instead of three."""
        if not self.base_layer.weight.is_floating_point():
            raise TypeError("Cannot merge into a quantized base layer in place: use "
                            "ftcourse.qlora.merge_into_4bit (lossy) or ftcourse.qlora.dequantize first.")
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge()` (exact up to floating-point rounding)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"


class DoRALinear(LoRALinear):
    """DoRA (Liu et al. 2024, arXiv:2402.09353): each output row of W = W0 + scaling * B A split into
    a length and a direction, W' = m * W / ||W||, with the lengths m (d_out,) trained on their own
    and LoRA updating the direction. m starts at ||W0||, so a fresh adapter changes nothing. As in
    the paper (section 4.3) and peft, ||W|| is treated as a constant in the backward pass.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False):
        super().__init__(base_layer, r, alpha, dropout, rslora)
        self.magnitude = nn.Parameter(self.row_norms().detach())      # ||W0|| per row while B = 0

    def row_norms(self) -> Tensor:
        """||W0 + scaling * B A|| of each output row, (d_out,), with B A detached."""
        direction = self.base_layer.weight.to(self.lora_A.weight.dtype) + self.scaling * (
            self.lora_B.weight @ self.lora_A.weight).detach()
        return torch.linalg.norm(direction, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        x = x.to(self.lora_A.weight.dtype)
        if self.training and not isinstance(self.lora_dropout, nn.Identity):
            x = self.lora_dropout(x)           # the update sees a dropped-out input: W0 x again on it
            base = F.linear(x, self.base_layer.weight.to(x.dtype))
        else:
            bias = self.base_layer.bias
            base = (result if bias is None else result - bias).to(x.dtype)      # W0 x, already computed
        rescale = self.magnitude / self.row_norms().detach()               # m / ||W||, per row
        update = (rescale - 1) * base + rescale * self.lora_B(self.lora_A(x)) * self.scaling
        return (result + update).to(result.dtype)

    def delta_weight(self) -> Tensor:
        """The change to W0 that merging makes: m / ||W|| * (W0 + scaling * B A) - W0."""
        weight = self.base_layer.weight.to(self.lora_A.weight.dtype)
        merged = (self.magnitude / self.row_norms())[:, None] * (weight + super().delta_weight())
        return merged - weight

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 = W' / (m / ||W||) - scaling * B A, with ||W|| as it was before the merge."""
        if self.merged:
            weight = self.base_layer.weight
            rescale = (self.magnitude / self._norms_at_merge)[:, None]
            weight.copy_((weight / rescale - super().delta_weight()).to(weight.dtype))
            self.merged = False

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._norms_at_merge = self.row_norms()
        super().merge()


# ---------------------------------------------------------------- surgery

def require_unadapted(model: nn.Module) -> None:
    """Raise ValueError if `model` already has LoRA layers: adapting it again would wrap the
    adapters' own layers, or find none of its targets left as plain linear layers."""
    if adapted := sorted(lora_layers(model)):
        raise ValueError(f"The model already has {len(adapted)} LoRA layer(s) (e.g. {adapted[0]!r}): it was "
                         "adapted before, for example by an earlier finetune on the same model object "
                         "(finetune adapts the model it is given, in place). Start each run from a "
                         "fresh copy of the base (copy.deepcopy(base), or load_base() again); to keep "
                         "training the adapters it has, call ftcourse.train.train on it directly.")


def apply_lora(model: nn.Module, config: LoRA) -> nn.Module:
    """Freeze `model` and wrap each target linear layer in a `LoRALinear`, in place."""
    require_unadapted(model)
    names = match_modules(model, config.targets)
    freeze(model)
    layer = DoRALinear if config.dora else LoRALinear
    replace_modules(model, names, lambda base: layer(base, config.r, config.alpha, config.dropout,
                                                     config.rslora))
    if config.init == "pissa":
        for adapted in lora_layers(model).values():
            adapted.init_pissa()
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA layer of the model by its dotted name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model is its base: the reference policy of DPO without a second copy."""
    layers = list(lora_layers(model).values())
    if any(layer.merged for layer in layers):
        raise ValueError("Adapters are merged into the weights; unmerge_lora(model) before disabling them.")
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


# ---------------------------------------------------------------- saving and loading (peft's format)

def to_peft_state(model: nn.Module) -> dict[str, Tensor]:
    """Every weight of our LoRA model under the name peft's model for the same config
    (`get_peft_model(base, config.to_peft())`, adapter "default") gives it:
    `peft_model.load_state_dict(to_peft_state(ours), strict=True)` loads them all. (A QLoRA model's
    4-bit layers store other buffers than bitsandbytes': move its adapters with `lora_state_dict`.)"""
    return {peft_name(name): tensor for name, tensor in model.state_dict().items()}


def from_peft_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A peft LoRA model's state under our names: `ours.load_state_dict(from_peft_state(
    peft_model.state_dict()), strict=True)`."""
    ours = {theirs: mine for mine, theirs in PEFT_NAMES.items()}
    return {_renamed(name, ours).removeprefix(PEFT_PREFIX): tensor for name, tensor in state.items()}


def peft_name(name: str) -> str:
    """The name peft's model gives our parameter or buffer `name` (adapter "default")."""
    return PEFT_PREFIX + _renamed(name, PEFT_NAMES)


def _renamed(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if name.endswith(old):
            return name[:-len(old)] + new
    return name


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights under peft's saved names: base_model.model.<module>.lora_A.weight (and
    DoRA's lengths as <module>.lora_magnitude_vector)."""
    state = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            state[f"{PEFT_PREFIX}{name}.{part}.weight"] = getattr(layer, part).weight.detach().contiguous()
        if isinstance(layer, DoRALinear):
            state[f"{PEFT_PREFIX}{name}.{MAGNITUDE}"] = layer.magnitude.detach().contiguous()
    return state


def save_adapter(model: nn.Module, directory: str | Path, config: LoRA,
                 base_model_name: str | None = None) -> Path:
    """Write adapter_model.safetensors and adapter_config.json as peft's save_pretrained does."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = lora_state_dict(model)
    if not weights:
        raise ValueError("The model has no LoRA layers to save; apply_lora(model, config) first.")
    if any(layer.pissa for layer in lora_layers(model).values()):
        raise ValueError("These are PiSSA adapters: they only make sense on the base they were initialised "
                         "with, whose weights lost their principal part to B A, so saved alone they would "
                         "be wrong on the original base. Save the merged model instead "
                         "(ftcourse.export.export_merged), which is the fine-tuned model exactly.")
    save_file(weights, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    targets = sorted({name.rsplit(".", 1)[-1] for name in lora_layers(model)})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": config.r, "lora_alpha": config.alpha,
        "lora_dropout": config.dropout, "use_rslora": config.rslora, "use_dora": config.dora,
        "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "base_model_name_or_path": base_model_name or _model_name(model),
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True))
    return directory


def read_adapter_config(directory: str | Path) -> LoRA:
    """The `LoRA` config of a saved adapter (ours or peft's)."""
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"No {ADAPTER_CONFIG} in {directory}; is it an adapter folder?")
    fields = json.loads(path.read_text())
    if fields.get("peft_type") != "LORA":
        raise ValueError(f"{path} describes a {fields.get('peft_type')!r} adapter, not LoRA.")
    targets = fields["target_modules"]
    return LoRA(r=fields["r"], alpha=fields["lora_alpha"], dropout=fields.get("lora_dropout", 0.0),
                rslora=fields.get("use_rslora", False), dora=fields.get("use_dora", False),
                targets=targets if isinstance(targets, str) else tuple(sorted(targets)))


def read_adapter_weights(directory: str | Path) -> dict[str, Tensor]:
    """The tensors of `directory/adapter_model.safetensors`; a pickle file (.bin) is refused, unread,
    since unpickling can run any code, and a damaged file is named as such."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        pickled = sorted(p.name for p in Path(directory).glob("adapter_model.*")
                         if p.suffix in (".bin", ".pt"))
        if pickled:
            raise ValueError(f"{directory} holds {pickled[0]}, a pickle file, which can run code when "
                             f"loaded; ftcourse loads {ADAPTER_WEIGHTS} only. If you trust the file, "
                             "convert it with peft: PeftModel.from_pretrained(base, folder)"
                             ".save_pretrained(new_folder, safe_serialization=True).")
        raise FileNotFoundError(f"No {ADAPTER_WEIGHTS} in {directory}; save the adapter with save_adapter "
                                "(or peft's save_pretrained) first.")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt: {err}); "
                         "save the adapter again.") from None


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a saved LoRA adapter into `model`, adding LoRA layers first if it has none.

    A model that already has LoRA layers of the same shapes swaps to the new weights in place:
    several adapters share one base model and one copy of its weights.
    """
    config = read_adapter_config(directory)
    weights = read_adapter_weights(directory)
    if not lora_layers(model):
        apply_lora(model, config)
    ours = lora_state_dict(model)
    for key in sorted(set(weights) & set(ours)):
        if weights[key].shape != ours[key].shape:
            module = key[len(PEFT_PREFIX):].rsplit(".", 2)[0]
            raise ValueError(f"Shape mismatch for {module}: the adapter's {key.rsplit('.', 2)[-2]} is "
                             f"{tuple(weights[key].shape)} but this model needs {tuple(ours[key].shape)}; "
                             "the adapter was made for another base model or another rank.")
    if missing := sorted(set(weights) - set(ours)):
        raise ValueError(f"The adapter in {directory} has weights for modules this model lacks or does "
                         f"not adapt, e.g. {missing[0]}; it was made for another model or other targets.")
    if uncovered := sorted(set(ours) - set(weights)):
        raise ValueError(f"This model adapts modules the adapter in {directory} has no weights for, "
                         f"e.g. {uncovered[0]}; load it into a model with the adapter's targets.")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, tensor in weights.items():
            if key.endswith(f".{MAGNITUDE}"):
                layers[key[len(PEFT_PREFIX):-len(MAGNITUDE) - 1]].magnitude.copy_(tensor)
            else:
                name, part, _ = key[len(PEFT_PREFIX):].rsplit(".", 2)
                getattr(layers[name], part).weight.copy_(tensor)
    for layer in layers.values():
        layer.scaling = config.scaling   # the adapter's alpha, which may differ from the last one's
    return model


def _model_name(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


__all__ = ["DoRALinear", "LoRA", "LoRALinear", "adapters_disabled", "apply_lora", "from_peft_state",
           "load_adapter", "lora_layers", "lora_state_dict", "merge_lora", "peft_name", "read_adapter_config",
           "read_adapter_weights", "save_adapter", "to_peft_state", "unmerge_lora"]
