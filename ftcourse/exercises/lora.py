"""Exercises on LoRA (chapter 05_lora): the forward pass, merging B A into W0, counting parameters;
predicting the share LoRA trains on a real model; an open experiment on adapter size against rank.

Each check runs the learner's function on seeded random inputs and compares it with
`ftcourse.lora` (`LoRALinear`, `count_lora_parameters`); common mistakes are named in the message.
Shapes: x (..., d_in), W0 (d_out, d_in), A (r, d_in), B (d_out, r), as in `ftcourse.lora`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.lora import LoRA, LoRALinear
from ftcourse.params import REAL_MODELS, count_lora_parameters, linear_shapes


def lora_forward(x: Tensor, W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    """h = W0 x + (alpha / r) B A x for x of shape (..., d_in): the frozen layer plus its update.
    PyTorch keeps x as a row vector, so W x is written x @ W.T."""
    frozen = x @ W0.T
    update = (x @ A.T) @ B.T          # down to r numbers with A, back up to d_out with B
    return frozen + (alpha / r) * update


def merge_lora_weight(W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> Tensor:
    """W0 + (alpha / r) B A, a new (d_out, d_in) matrix: one plain linear layer that computes what
    the frozen layer and its adapter compute together, so inference costs nothing extra."""
    return W0 + (alpha / r) * (B @ A)


def lora_parameter_count(config: dict, targets: tuple[str, ...], r: int) -> int:
    """Trainable LoRA parameters on a Llama-family model: r * (d_in + d_out) for every target layer
    in every transformer layer, which is why LoRA trains so few of the model's parameters."""
    D, F = config["hidden_size"], config["intermediate_size"]
    H, K = config["num_attention_heads"], config["num_key_value_heads"]
    hd = D // H                                  # head size; k and v have only K heads (GQA)
    shapes = {"q_proj": (D, H * hd), "k_proj": (D, K * hd), "v_proj": (D, K * hd), "o_proj": (H * hd, D),
              "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}
    per_layer = sum(r * (d_in + d_out) for name, (d_in, d_out) in shapes.items() if name in targets)
    return config["num_hidden_layers"] * per_layer


# ---------------------------------------------------------------- hidden tests

def _random_lora(seed: int, d_in: int, d_out: int, r: int) -> tuple[Tensor, Tensor, Tensor]:
    # W0, A and B in float64; B is not zero (as after training), or any update would pass.
    generator = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d_out, d_in, generator=generator, dtype=torch.float64) / math.sqrt(d_in)
    A = torch.randn(r, d_in, generator=generator, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=generator, dtype=torch.float64)
    return W0, A, B


def _lora_layer(W0: Tensor, A: Tensor, B: Tensor, alpha: float, r: int) -> LoRALinear:
    # The package's layer holding these weights: the oracle. fork_rng: its random init must not
    # change the learner's random state.
    with torch.random.fork_rng(devices=[]):
        layer = LoRALinear(nn.Linear(W0.shape[1], W0.shape[0], bias=False, dtype=W0.dtype), r, alpha)
    with torch.no_grad():
        layer.base_layer.weight.copy_(W0)
        layer.lora_A.weight.copy_(A)
        layer.lora_B.weight.copy_(B)
    return layer


# (seed, d_in, d_out, r, alpha, leading dims of x); the square layer comes first, because only
# there do the transposition mistakes give a value (elsewhere they fail on the shapes).
FORWARD_CASES = [(0, 6, 6, 2, 4.0, (3,)), (1, 5, 7, 3, 12.0, (2, 4))]


@exercise(chapter="05_lora", solution=lora_forward,
          task="Compute h = W0 x + (alpha / r) B A x for a batch of inputs x of shape (..., d_in).")
def check_lora_forward(answer: Callable) -> None:
    """Compare with `LoRALinear` on a square and a rectangular layer, with batched inputs."""
    for seed, d_in, d_out, r, alpha, leading in FORWARD_CASES:
        W0, A, B = _random_lora(seed, d_in, d_out, r)
        generator = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(*leading, d_in, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            want = _lora_layer(W0, A, B, alpha, r)(x)
        frozen, update = x @ W0.T, x @ A.T @ B.T
        hints = {
            "forgot the scaling: the update is (alpha / r) * B A x, not B A x.": frozen + update,
            "scaled the update by r / alpha; LoRA scales it by alpha / r.": frozen + r / alpha * update,
            "scaled by alpha / sqrt(r), which is rsLoRA; plain LoRA scales by alpha / r.":
                frozen + alpha / math.sqrt(r) * update,
            "returned only the update (alpha / r) B A x; add the frozen layer's output W0 x.":
                alpha / r * update,
            "returned only W0 x; the low-rank update (alpha / r) B A x is missing.": frozen,
        }
        if d_in == d_out:   # the transposed products only have the right shapes here
            hints |= {
                "computed x @ B @ A, which is (B A)^T x; for a row vector x, B A x is x @ A.T @ B.T.":
                    frozen + alpha / r * (x @ B @ A),
                "multiplied by W0 instead of W0.T: for a row vector x, W0 x is x @ W0.T.":
                    x @ W0 + alpha / r * update,
                "used W0 and B A untransposed: for a row vector x, W x is x @ W.T (so x @ W0.T and "
                "x @ A.T @ B.T).": x @ W0 + alpha / r * (x @ B @ A),
            }
        what = f"lora_forward with x {tuple(x.shape)}, W0 {tuple(W0.shape)}, r={r}, alpha={alpha:g}"
        expect_close(answer(x, W0, A, B, alpha, r), want, what, atol=1e-10, hints=hints)


@exercise(chapter="05_lora", solution=merge_lora_weight,
          task="Return the merged weight W0 + (alpha / r) B A as a new tensor, leaving W0 unchanged.")
def check_merge_lora_weight(answer: Callable) -> None:
    """Compare with `LoRALinear.merge()`, and check that W0 itself was not changed."""
    for seed, d_in, d_out, r, alpha in [(2, 6, 6, 3, 9.0), (3, 5, 7, 2, 8.0)]:
        W0, A, B = _random_lora(seed, d_in, d_out, r)
        layer = _lora_layer(W0, A, B, alpha, r)     # holds its own copy of W0
        layer.merge()
        original = W0.clone()
        what = f"merge_lora_weight with W0 {tuple(W0.shape)}, r={r}, alpha={alpha:g}"
        got = answer(W0, A, B, alpha, r)
        if not torch.equal(W0, original):
            raise ExerciseFailed(f"{what}: changed W0 in place (W0 += ...). Return a new tensor and "
                                 "leave W0 as it was: unmerging and the other adapters need it.")
        update = B @ A
        hints = {
            "forgot the scaling: add (alpha / r) * B A, not B A.": W0 + update,
            "scaled B A by r / alpha; LoRA scales it by alpha / r.": W0 + r / alpha * update,
            "returned only the update (alpha / r) B A; add it to W0.": alpha / r * update,
            "returned the transpose: the merged weight has W0's shape (d_out, d_in).":
                (W0 + alpha / r * update).T,
        }
        if d_in == d_out:   # elsewhere (B A)^T does not fit W0 at all
            hints["added (B A)^T = A.T @ B.T; the update has W0's shape (d_out, d_in): B @ A."] = \
                W0 + alpha / r * update.T
        expect_close(got, layer.base_layer.weight.detach(), what, atol=1e-10, hints=hints)


def _per_layer_counts(config: dict, targets: tuple[str, ...], r: int) -> dict[str, int]:
    # Per-layer numbers the common mistakes produce, from the package's layer shapes.
    shapes = {name: shape for name, shape in linear_shapes(config).items() if name in targets}
    D = config["hidden_size"]
    as_if_no_gqa = {name: (D, D) if name in ("k_proj", "v_proj") else shape for name, shape in shapes.items()}
    return {"one layer": sum(r * (d_in + d_out) for d_in, d_out in shapes.values()),
            "no GQA": sum(r * (d_in + d_out) for d_in, d_out in as_if_no_gqa.values()),
            "full matrices": sum(d_in * d_out for d_in, d_out in shapes.values()),
            "A only": sum(r * d_in for d_in, _ in shapes.values()),
            "B only": sum(r * d_out for _, d_out in shapes.values())}


CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads")
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COUNT_CASES = [("Llama-3-8B", ("q_proj", "k_proj", "v_proj"), 8),
               ("Mistral-7B", LINEAR_LAYERS, 16),
               ("Llama-2-7B", ("q_proj", "v_proj"), 8),
               ("SmolLM2-135M", ("up_proj", "down_proj", "o_proj"), 4)]


@exercise(chapter="05_lora", solution=lora_parameter_count,
          task="Count the trainable parameters of LoRA at rank r on the target layers of a Llama-family "
               "model, from its config.")
def check_lora_parameter_count(answer: Callable) -> None:
    """Compare with `count_lora_parameters` on public configs of real models (grouped-query ones first)."""
    for model, targets, r in COUNT_CASES:
        config = {key: REAL_MODELS[model][key] for key in CONFIG_KEYS}
        layers = config["num_hidden_layers"]
        wrong = _per_layer_counts(config, targets, r)
        hints = {
            "counted one transformer layer; every one of the num_hidden_layers layers has its own "
            "adapters.": wrong["one layer"],
            "counted k_proj and v_proj as hidden_size x hidden_size; with grouped-query attention they "
            "map hidden_size to num_key_value_heads * head_dim.": layers * wrong["no GQA"],
            "counted the full matrices d_in * d_out (what full fine-tuning trains); LoRA trains "
            "r * (d_in + d_out) per layer.": layers * wrong["full matrices"],
            "counted only A (r x d_in); B (d_out x r) trains too.": layers * wrong["A only"],
            "counted only B (d_out x r); A (r x d_in) trains too.": layers * wrong["B only"],
            "counted every linear layer, not only the targets.":
                count_lora_parameters(config, LoRA(r=r, targets="all-linear")),
        }
        expect_number(answer(config, targets, r), count_lora_parameters(config, LoRA(r=r, targets=targets)),
                      f"lora_parameter_count for {model}, targets {targets}, r={r}", rel=0, hints=hints)


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("lora_trainable_share", chapter="05_lora",
        question="LoRA at r=16 on all seven linear layers (q, k, v, o, gate, up, down) of every transformer "
                 "layer of Llama-3-8B: what percentage of the model's parameters does it train?",
        form=Number(rel=0.25, low=0, high=100, unit="%"))


experiment("lora_file_size", chapter="05_lora",
           question="How does the size of a saved LoRA adapter grow with the rank r? Apply LoRA at two ranks "
                    "or more to the tiny base model, save each adapter with save_adapter, measure its "
                    "adapter_model.safetensors in kilobytes, and state the rule you see and why it holds.",
           fields={"ranks": Field(list, item=int, low=1, min_len=2),
                   "sizes_kb": Field(list, item=float, low=0, min_len=2),
                   "conclusion": Field(str, min_len=20)},
           checks=(one_value_per("ranks", ["sizes_kb"], "rank", "ranks"),))
