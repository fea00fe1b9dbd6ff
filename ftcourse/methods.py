"""Fine-tuning methods: the "how", independent of the data (the "what").

A method is a small frozen config with `apply(model) -> model` that decides which parameters
train (and adds any new ones). The training loop then trains whatever is left unfrozen. Full
fine-tuning lives here; LoRA (`ftcourse.lora`) and the methods of later chapters join it in
`METHODS`, which the CLI's --method choices come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import nn

from ftcourse.adapters import IA3, BottleneckAdapter
from ftcourse.checkpoints import trainable_state
from ftcourse.lora import LoRA, save_adapter
from ftcourse.prompts import PrefixTuning, PromptTuning, save_soft_prompt
from ftcourse.qlora import QLoRA


class Method(Protocol):
    """A fine-tuning method: `apply` decides what trains (the tokenizer serves methods that start
    from a text, such as prompt tuning's init_text; the others ignore it)."""

    name: str

    def apply(self, model: nn.Module, tokenizer: Any = None) -> nn.Module: ...


@dataclass(frozen=True)
class Full:
    """How to fine-tune: every parameter of the model trains."""

    name: ClassVar[str] = "full"

    def apply(self, model: nn.Module, tokenizer: Any = None) -> nn.Module:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model


METHODS: dict[str, type] = {"full": Full, "lora": LoRA, "qlora": QLoRA, "prompt_tuning": PromptTuning,
                            "prefix_tuning": PrefixTuning, "adapter": BottleneckAdapter, "ia3": IA3}


# What the chapters found works on the tiny model, per method: the config and its learning rate,
# the defaults of `ftcourse finetune` and of `finetune` without a config. Chapter 4 trained each
# method at these rates; chapter 5 shows LoRA needs all linear layers and about 10x full
# fine-tuning's rate to match it (the article's start: r = 8, alpha = 16, 3 epochs); chapter 7
# measured the soft prompts, IA3 and adapters. The dataclasses' own defaults follow the libraries
# instead (LoRA on q_proj and v_proj, as peft picks for a Llama).
RECOMMENDED: dict[str, tuple[Method, float]] = {
    "full": (Full(), 1e-3),
    "lora": (LoRA(r=8, alpha=16, targets="all-linear"), 1e-2),
    "qlora": (QLoRA(r=8, alpha=16, targets="all-linear"), 1e-2),
    "prompt_tuning": (PromptTuning(num_virtual_tokens=20), 3e-1),
    "prefix_tuning": (PrefixTuning(num_virtual_tokens=10), 1e-1),
    "adapter": (BottleneckAdapter(reduction_factor=16), 1e-2),
    "ia3": (IA3(), 1e-1),
}
RECOMMENDED_EPOCHS = 3


def recommended_lr(method: str | Method) -> float:
    """The learning rate the chapters found works for a method (its `RECOMMENDED` rate); 1e-3,
    full fine-tuning's, for a method the chapters did not train."""
    return RECOMMENDED.get(get_method(method).name, (None, 1e-3))[1]


def get_method(method: str | Method) -> Method:
    """A method config from its name ("full", ...) or the config itself."""
    if not isinstance(method, str):
        return method
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; available methods: {', '.join(METHODS)}.")
    return METHODS[method]()


def count_trainable(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts, and the trainable share."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}


def save_trained(model: nn.Module, method: str | Method, directory: str | Path,
                 tokenizer: Any = None) -> Path:
    """Save what `method` trained, in the format its library uses: a LoRA adapter (LoRA, QLoRA),
    a soft prompt (prompt and prefix tuning), the whole model (and tokenizer, if given) for full
    fine-tuning, and for the other PEFT methods (IA3, adapters) their trainable weights alone."""
    from safetensors.torch import save_file

    method, directory = get_method(method), Path(directory)
    if isinstance(method, (LoRA, QLoRA)):
        return save_adapter(model, directory, method.lora if isinstance(method, QLoRA) else method)
    if isinstance(method, (PromptTuning, PrefixTuning)):
        return save_soft_prompt(model, directory)
    if isinstance(method, (IA3, BottleneckAdapter)):
        directory.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state(model), directory / "trainable.safetensors")
        return directory
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def saved_megabytes(model: nn.Module, method: str | Method) -> float:
    """Megabytes on disk of what `method` trained, saved as `save_trained` saves it."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        saved = save_trained(model, method, folder)
        return sum(file.stat().st_size for file in saved.iterdir()) / 1e6
