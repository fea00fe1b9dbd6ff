"""Exercises on LoRA in practice (chapter 05b_lora_in_practice): which modules a list of targets
adapts, the largest rank a parameter budget allows; predicting the FFN's share against q and v; an
open experiment on the cost of swapping adapters.

The checks compare with the package's own code: `ftcourse._surgery.match_modules` (peft's rule
for target names) and `ftcourse.params.count_lora_parameters`; common mistakes are named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ftcourse._surgery import match_modules
from ftcourse.exercises.core import ExerciseFailed, exercise, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.lora import LoRA
from ftcourse.params import REAL_MODELS, count_lora_parameters, linear_shapes


def lora_target_names(names: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The names, in their order, that a list of targets adapts by peft's rule: a whole name, or
    the name's last dotted parts ("q_proj", "layers.1.self_attn.q_proj"), never part of a word."""
    return [name for name in names
            if any(name == target or name.endswith("." + target) for target in targets)]


def rank_for_budget(config: dict, targets: Sequence[str], budget: int) -> int:
    """The largest rank whose LoRA on `targets` trains at most `budget` parameters: each rank costs
    d_in + d_out per adapted layer, in every transformer layer, so the count grows linearly in r."""
    shapes = linear_shapes(config)                   # {name: (d_in, d_out)}, k and v narrower with GQA
    per_rank = config["num_hidden_layers"] * sum(d_in + d_out for d_in, d_out in (shapes[t] for t in targets))
    return budget // per_rank


# ---------------------------------------------------------------- hidden tests

def _named_model(names: Sequence[str]) -> nn.Module:
    # A module tree with a linear layer at each dotted name: what match_modules searches.
    root = nn.Module()
    for name in names:
        parent, *path = root, *name.split(".")
        for part in path[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(path[-1], nn.Linear(1, 1))
    return root


LLAMA_NAMES = [f"model.layers.{i}.{block}.{name}" for i in (0, 1) for block, layer_names in
               (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                ("mlp", ("gate_proj", "up_proj", "down_proj")))
               for name in layer_names] + ["lm_head"]
T5_NAMES = [f"encoder.block.{i}.layer.{j}.{block}.{name}" for i in (0, 1) for j, block, layer_names in
            ((0, "SelfAttention", ("q", "k", "v", "o")), (1, "DenseReluDense", ("wi", "wo")))
            for name in layer_names] + ["lm_head"]
# T5 first: only there does a target ("o") end another layer's name ("wo"). Then a dotted target and
# a target that is a whole name without a dot ("lm_head").
TARGET_CASES = [(T5_NAMES, ("q", "o")), (LLAMA_NAMES, ("layers.1.self_attn.q_proj", "lm_head")),
                (LLAMA_NAMES, ("v_proj", "q_proj"))]


@exercise(chapter="05b_lora_in_practice", solution=lora_target_names,
          task="Return the module names, in their order, that a list of LoRA targets adapts, by peft's rule.")
def check_lora_target_names(answer: Callable) -> None:
    """Compare with `match_modules` (the package's surgery, peft's rule) on T5- and Llama-style names."""
    for names, targets in TARGET_CASES:
        want = match_modules(_named_model(names), targets)
        what = f"lora_target_names(names of a {'T5' if names is T5_NAMES else 'Llama'} model, {targets})"
        got = answer(list(names), targets)
        if not isinstance(got, list) or not all(isinstance(name, str) for name in got):
            raise ExerciseFailed(f"{what}: expected a list of names (str), got {type(got).__name__}.")
        if got == want:
            continue
        hints = {
            "matched names that only end in the target's letters (e.g. 'wo' for the target 'o'); a target "
            "matches whole dotted parts: name == target or name.endswith('.' + target).":
                [n for n in names if any(n.endswith(t) for t in targets)],
            "matched names that contain the target anywhere; a target must match the end of the name at a "
            "dot (or the whole name).": [n for n in names if any(t in n for t in targets)],
            "compared only the last part of each name; a target can have dots itself "
            "('layers.1.self_attn.q_proj') and matches the end of the full name.":
                [n for n in names if n.split(".")[-1] in targets],
            "missed a name equal to a target: 'lm_head' has no dot before it, and name == target "
            "matches too.":
                [n for n in names if any(n.endswith("." + t) for t in targets)],
        }
        for mistake, wrong in hints.items():
            if got == wrong:
                raise ExerciseFailed(f"{what}: {mistake}")
        if sorted(got) == sorted(want):
            raise ExerciseFailed(f"{what}: the right names in another order; return them in the order "
                                 "of `names`.")
        raise ExerciseFailed(f"{what}: expected {want}, got {got}.")


CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads")
# (model, targets, budget): budgets where rounding to the nearest rank goes over, and GQA models
# with k or v among the targets, where counting them as square changes the rank.
BUDGET_CASES = [("Llama-2-7B", ("q_proj", "v_proj"), 4_194_304 + 500_000),
                ("Llama-3-8B", ("q_proj", "k_proj", "v_proj", "o_proj"), 20_000_000),
                ("SmolLM2-135M", ("gate_proj", "up_proj", "down_proj"), 2_000_000),
                ("Mistral-7B", ("k_proj", "v_proj", "down_proj"), 9_000_000)]


@exercise(chapter="05b_lora_in_practice", solution=rank_for_budget,
          task="Return the largest LoRA rank on the target layers that trains at most `budget` parameters.")
def check_rank_for_budget(answer: Callable) -> None:
    """Compare with `count_lora_parameters` on public configs of real models (GQA ones among them)."""
    for model, targets, budget in BUDGET_CASES:
        config = {key: REAL_MODELS[model][key] for key in CONFIG_KEYS}
        per_rank = count_lora_parameters(config, LoRA(r=1, targets=targets))
        shapes = linear_shapes(config)
        D = config["hidden_size"]
        square = {name: (D, D) if name in ("k_proj", "v_proj") else shapes[name] for name in targets}
        hints = {
            "rounded to the nearest rank; the rank must keep the count at or under the budget: round down.":
                round(budget / per_rank),
            "counted one transformer layer; every one of the num_hidden_layers layers has its own adapters.":
                budget // (per_rank // config["num_hidden_layers"]),
            "counted k_proj and v_proj as hidden_size x hidden_size; with grouped-query attention they map "
            "hidden_size to num_key_value_heads * head_dim.":
                budget // (config["num_hidden_layers"] * sum(sum(shape) for shape in square.values())),
        }
        hints = {mistake: rank for mistake, rank in hints.items() if rank != budget // per_rank}
        expect_number(answer(config, targets, budget), budget // per_rank,
                      f"rank_for_budget for {model}, targets {targets}, budget {budget:,}", rel=0,
                      hints=hints)


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("ffn_to_qv_parameters", chapter="05b_lora_in_practice",
        question="LoRA at r=8 on Llama-2-7B: how many times as many parameters does an adapter on the FFN "
                 "(gate, up, down) train as one on q and v?",
        form=Number(rel=0.25, low=0))


experiment("adapter_swap_time", chapter="05b_lora_in_practice",
           question="How long does swapping a LoRA adapter on one base take (load_adapter), as the rank "
                    "grows, against loading a fresh copy of the base model (load_base)? Time the swap at two "
                    "ranks or more, and say what it means for serving many adapters from one base.",
           fields={"ranks": Field(list, item=int, low=1, min_len=2),
                   "swap_ms": Field(list, item=float, low=0, min_len=2),
                   "load_base_ms": Field(float, low=0),
                   "conclusion": Field(str, min_len=20)},
           checks=(one_value_per("ranks", ["swap_ms"], "rank", "ranks"),))
