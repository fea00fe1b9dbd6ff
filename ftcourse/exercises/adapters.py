"""Exercises on adapters between frozen layers (chapter 07b_adapters_ia3): IA3's scaling, a
bottleneck adapter's forward pass; predicting what IA3 trains on a real model; an open experiment on
the bottleneck's size.

The checks compare with the package's own layers, `ftcourse.adapters.IA3Linear` (tested equal to
peft's IA3) and `AdapterLinear`, holding the same weights; common mistakes are named.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ftcourse.adapters import AdapterLinear, IA3Linear
from ftcourse.exercises.core import exercise, expect_close
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict


def ia3_forward(x: Tensor, W: Tensor, scale: Tensor, feedforward: bool) -> Tensor:
    """IA3 on a frozen linear layer W (d_out, d_in): keys and values scale their output, W x * l;
    the FFN's down projection scales its input, W (x * l). One number per channel is all it trains."""
    if feedforward:
        return (x * scale) @ W.T
    return (x @ W.T) * scale


def bottleneck_adapter(h: Tensor, down_W: Tensor, down_b: Tensor, up_W: Tensor, up_b: Tensor) -> Tensor:
    """h + up(silu(down(h))): a layer's output h plus a small residual MLP through a bottleneck
    (down: d -> d / reduction_factor, up: back to d), as Houlsby et al. place after each sublayer."""
    bottleneck = torch.nn.functional.silu(h @ down_W.T + down_b)
    return h + bottleneck @ up_W.T + up_b


# ---------------------------------------------------------------- hidden tests

def _random(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


@exercise(chapter="07b_adapters_ia3", solution=ia3_forward,
          task="Apply IA3 to a frozen linear layer: scale its output (keys, values) or, for the FFN's down "
               "projection (feedforward=True), its input.")
def check_ia3_forward(answer: Callable) -> None:
    """Compare with `IA3Linear` holding the same weight and vector, on a square layer (where scaling
    the wrong side still gives a value) and on a rectangular one, both ways."""
    for seed, d_in, d_out in [(0, 6, 6), (1, 5, 7)]:
        generator = torch.Generator().manual_seed(seed)
        W, x = _random(generator, d_out, d_in), _random(generator, 3, d_in)
        for feedforward in (False, True):
            layer = IA3Linear(nn.Linear(d_in, d_out, bias=False, dtype=torch.float64), feedforward)
            scale = 1 + 0.5 * _random(generator, d_in if feedforward else d_out)
            with torch.no_grad():
                layer.base_layer.weight.copy_(W)
                layer.ia3_l.data = scale.clone()
                want = layer(x)
            hints = {"added the vector; IA3 multiplies by it (it starts at ones, so the layer is unchanged).":
                     x @ W.T + scale if not feedforward else (x + scale) @ W.T}
            if d_in == d_out:          # the other side only fits a square layer
                hints["scaled the output of the down projection: IA3 scales its input, the FFN's "
                      "activation (feedforward=True)." if feedforward else
                      "scaled the input of k or v: IA3 scales their output (feedforward=False)."] = \
                    (x @ W.T) * scale if feedforward else (x * scale) @ W.T
            what = f"ia3_forward with W {tuple(W.shape)}, feedforward={feedforward}"
            expect_close(answer(x.clone(), W.clone(), scale.clone(), feedforward), want, what, atol=1e-10,
                         hints=hints)


@exercise(chapter="07b_adapters_ia3", solution=bottleneck_adapter,
          task="Return h + up(silu(down(h))) for a layer's output h and the adapter's down and up weights "
               "and biases.")
def check_bottleneck_adapter(answer: Callable) -> None:
    """Compare with `AdapterLinear` around an identity layer (so its input is h), with up not zero.
    The layer computes its adapter in float32, so the comparison is in float32."""
    for seed, d, reduction_factor in [(2, 8, 4), (3, 12, 3)]:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            layer = AdapterLinear(nn.Linear(d, d, bias=False), reduction_factor)
        with torch.no_grad():
            layer.base_layer.weight.copy_(torch.eye(d))
            for linear in (layer.down, layer.up):          # trained weights: the up projection is not zero
                linear.weight.copy_(_random(generator, *linear.weight.shape) / math.sqrt(linear.in_features))
                linear.bias.copy_(0.1 * _random(generator, *linear.bias.shape))
        h = _random(generator, 2, 3, d).float()
        weights = [t.detach().clone() for t in (layer.down.weight, layer.down.bias, layer.up.weight,
                                                layer.up.bias)]
        with torch.no_grad():
            want = layer(h)
        down_W, down_b, up_W, up_b = weights
        inner = h @ down_W.T + down_b
        hints = {
            "returned only the adapter's output: add h, the residual the adapter sits on.":
                want - h,
            "used ReLU; the adapter's activation is SiLU (x * sigmoid(x)).":
                h + torch.relu(inner) @ up_W.T + up_b,
            "left out the activation: without it the bottleneck is one linear map.":
                h + inner @ up_W.T + up_b,
            "left out the biases of down and up.":
                h + torch.nn.functional.silu(h @ down_W.T) @ up_W.T,
        }
        what = f"bottleneck_adapter with h {tuple(h.shape)}, bottleneck {down_W.shape[0]}"
        expect_close(answer(h.clone(), *[w.clone() for w in weights]), want, what, atol=1e-5, hints=hints)


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("ia3_parameters_7b", chapter="07b_adapters_ia3",
        question="IA3 on the keys, the values and the FFN's down projection of every layer of Llama-2-7B: "
                 "how many thousand parameters does it train?",
        form=Number(rel=0.25, low=0, unit="thousand"))


experiment("adapter_bottleneck", chapter="07b_adapters_ia3",
           question="How small can a bottleneck adapter's bottleneck be? Train adapters with two reduction "
                    "factors or more on routing with one budget, measure each one's trainable parameters and "
                    "accuracy, and say what the bottleneck's size buys.",
           fields={"reduction_factors": Field(list, item=int, low=1, min_len=2),
                   "trainable": Field(list, item=int, low=1, min_len=2),
                   "accuracy": Field(list, item=float, low=0, high=1, min_len=2),
                   "conclusion": Field(str, min_len=20)},
           checks=(one_value_per("reduction_factors", ["trainable", "accuracy"], "reduction factor",
                                 "reduction factors"),))
