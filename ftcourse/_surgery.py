"""Model surgery shared by every PEFT method: find submodules by name, and replace them.

Targets follow peft's rules (`check_target_module_exists`): a list of names matches a module whose
full dotted name equals a name or ends with "." + name; a single string is a regular expression
that must match the full name; "all-linear" selects every linear layer except the output head.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from torch import nn


def output_head_name(model: nn.Module) -> str | None:
    """The dotted name of the LM head (`get_output_embeddings()`), if the model has one."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else getattr(model, "lm_head", None)
    return next((name for name, module in model.named_modules() if module is head), None)


def match_modules(model: nn.Module, targets: str | Sequence[str],
                  kind: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Linear) -> list[str]:
    """Names of the `kind` submodules that `targets` selects; an error lists the choices if none.

    Args:
        targets: module names or suffixes ("q_proj", "layers.0.mlp.up_proj"), a regex string
            matched against full names, or "all-linear".
    """
    candidates = [name for name, module in model.named_modules() if isinstance(module, kind) and name]
    head = output_head_name(model)
    if targets == "all-linear":
        chosen = [name for name in candidates if name != head]
    elif isinstance(targets, str):
        chosen = [name for name in candidates if re.fullmatch(targets, name)]
    else:
        chosen = [name for name in candidates if any(name == t or name.endswith("." + t) for t in targets)]
        if missing := [t for t in targets if not any(n == t or n.endswith("." + t) for n in candidates)]:
            raise ValueError(f"Target module(s) {missing} match no {_kind_name(kind)} in "
                             f"{type(model).__name__}; available names: {sorted(_suffixes(candidates))}.")
    if not chosen:
        raise ValueError(f"Targets {targets!r} match no {_kind_name(kind)} in {type(model).__name__}; "
                         f"available names: {sorted(_suffixes(candidates))}.")
    return chosen


def replace_modules(model: nn.Module, names: Sequence[str],
                    make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace each named submodule by `make(old_module)`, in place; return the model."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Set requires_grad=False on every parameter; methods then unfreeze what they add."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _suffixes(names: Sequence[str]) -> set[str]:
    # "model.layers.0.self_attn.q_proj" -> "q_proj": the short names a user would write.
    return {name.rsplit(".", 1)[-1] for name in names}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
