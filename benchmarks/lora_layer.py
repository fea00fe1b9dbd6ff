"""LoRA layer benchmark: our `LoRALinear` forward + backward against peft's LoRA `Linear` on the CPU.

    python benchmarks/lora_layer.py            # 1024 x 1024 (r=8, 8 x 128 tokens) and the tiny model's size
    python benchmarks/lora_layer.py --quick    # small shapes, few repeats (what the tests run)

Both layers wrap copies of the same fp32 `nn.Linear` (no bias, as in Llama), are made by the
libraries' own surgery (`apply_lora`; `peft.get_peft_model`), hold the same A and B (B non-zero,
checked equal outputs before timing) and run the same step: forward, backward of a fixed output
gradient into the input and the adapter, gradients cleared. Goal: ours <= 1.1x peft's time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from comparison import Comparison, command_line, interleaved_seconds, median, spread
from torch import nn

from ftcourse.lora import LoRA, apply_lora, to_peft_state
from ftcourse.tolerance import assert_close

GOAL = 1.1


@dataclass(frozen=True)
class Shape:
    """One layer size and batch: a (features x features) linear layer on (batch, seq_len) tokens."""

    name: str
    features: int
    batch: int
    seq_len: int
    r: int = 8


SHAPES = [Shape("1024x1024, 8x128 tokens", 1024, 8, 128), Shape("tiny model size, 16x32 tokens", 128, 16, 32)]
QUICK_SHAPES = [Shape("quick 64x64, 2x16 tokens", 64, 2, 16)]


class OneLinear(nn.Module):
    """The smallest model both libraries can adapt: one linear layer named like a Llama projection."""

    def __init__(self, features: int):
        super().__init__()
        self.q_proj = nn.Linear(features, features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def lora_pair(shape: Shape) -> tuple[nn.Module, nn.Module]:
    """(our LoRA layer, peft's) on copies of one random linear layer, with equal non-zero A and B."""
    import peft

    torch.manual_seed(0)
    model = OneLinear(shape.features)
    config = LoRA(r=shape.r, alpha=2 * shape.r, targets=("q_proj",))
    ours = apply_lora(copy.deepcopy(model), config)
    nn.init.normal_(ours.q_proj.lora_B.weight, std=0.02)            # with B = 0 any layer would agree
    peft_config = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=["q_proj"],
                                  lora_dropout=0.0, bias="none")
    theirs = peft.get_peft_model(copy.deepcopy(model), peft_config)
    theirs.load_state_dict(to_peft_state(ours), strict=True)         # the same weights, every one
    return ours.q_proj, theirs.base_model.model.q_proj


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, iterations: int) -> None:
    """`iterations` forward + backward passes, the gradients cleared after each."""
    for _ in range(iterations):
        layer(x).backward(grad)
        x.grad = None
        for p in layer.parameters():
            p.grad = None


def run(quick: bool = False, repeats: int | None = None) -> list[Comparison]:
    """Time forward + backward of our LoRA layer and peft's on each shape."""
    rows = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        ours, theirs = lora_pair(shape)
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(shape.batch, shape.seq_len, shape.features, generator=generator, requires_grad=True)
        grad = torch.randn(shape.batch, shape.seq_len, shape.features, generator=generator)
        assert_close(ours(x), theirs(x), n=shape.features + shape.r)   # W0 x, plus B (A x)
        # Small layers run several steps per timed call, so that each call takes ~0.1 s or more.
        flops = 6 * shape.batch * shape.seq_len * shape.features ** 2
        iterations = 1 if quick else max(1, round(1e9 / flops))
        reps = repeats or (3 if quick else 9)
        seconds = interleaved_seconds({"ours": partial(step, ours, x, grad, iterations),
                                       "library": partial(step, theirs, x, grad, iterations)}, reps, warmup=2)
        details = {**shape.__dict__, "dtype": "float32", "iterations_per_call": iterations, "repeats": reps,
                   "seconds": seconds}
        rows.append(Comparison(f"lora layer fwd+bwd, {shape.name}", "seconds", median(seconds["ours"]),
                               median(seconds["library"]), GOAL, higher_is_better=False, details=details,
                               spread=spread(seconds["ours"], seconds["library"])))
    return rows


def main(argv: list[str] | None = None) -> list[Comparison]:
    return command_line(run, __doc__.split("\n")[0], "small shapes and few repeats", argv)


if __name__ == "__main__":
    main()
