"""Pictures of the course's ideas, drawn from the package's own numbers so they stay true to it.

Each function returns a `Diagram`: a matplotlib `Figure` (built without pyplot, so Jupyter shows it
once, through the Diagram) and alt text that carries the same numbers as the picture. Shown as the
last expression of a notebook cell, it becomes on the site
`<figure class="ftcourse-diagram" data-diagram=NAME><img alt=...></figure>`, which sitetests look for.
Drawing coordinates are inches from the bottom left, so boxes and text keep their size at 7 inches.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from matplotlib import colormaps, patches
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from ftcourse.adapters import IA3, BottleneckAdapter
from ftcourse.dpo import DPO, dpo_loss, train_dpo
from ftcourse.lora import DoRALinear, LoRA, LoRALinear
from ftcourse.memory import GB, Setup, estimate
from ftcourse.memory.model import stored_4bit_bytes
from ftcourse.methods import RECOMMENDED, Full, get_method
from ftcourse.models import load_base
from ftcourse.params import REAL_MODELS, count_parameters, linear_shapes
from ftcourse.prompts import PrefixTuning, PromptTuning
from ftcourse.qlora import Linear4bit, QLoRA
from ftcourse.quant import CODES, DEFAULT_BLOCKSIZE, NESTED_BLOCKSIZE, bits_per_parameter, quantize_4bit
from ftcourse.retrieval import BM25, climb_ladder, engineered_prompt, few_shot_prompt, ladder_runs, rag_prompt
from ftcourse.reward import as_reward_fn, bradley_terry_loss, train_reward_model
from ftcourse.rl import GRPO, train_grpo
from ftcourse.sft import finetune

DIAGRAMS = ("lora_layer", "qlora_memory_layout", "preference_pipeline", "decision_ladder",
            "method_intervention", "training_step_memory")
WIDTH, DPI = 7.0, 110            # inches, dots per inch: readable in a book column
MODEL = "Llama-2-7B"             # the real config the pictures size things on (ftcourse.params)
# Chapter 4's setup for a 7B model: mixed precision, AdamW, one sequence of 512 tokens.
SETUP = Setup(precision="bf16-mixed", batch_size=1, seq_len=512)
Q_PROJ = linear_shapes(REAL_MODELS[MODEL])["q_proj"]              # (d_in, d_out) of its q_proj
LORA, QLORA = LoRA(r=8, alpha=16), QLoRA()                         # the configs drawn by default
FROZEN, TRAINABLE, DATA = "#d9d9d9", "#f4a259", "#8cb8e0"   # grey weights, orange updates, blue activations


@dataclass(frozen=True)
class Diagram:
    """A concept picture: its name (one of DIAGRAMS), the figure, and alt text for screen readers.

    Jupyter shows `_repr_html_` (the PNG with its alt text); `_repr_png_` is the fallback.
    """

    name: str
    figure: Figure
    alt: str

    @cached_property
    def png(self) -> bytes:
        """The figure as PNG bytes, rendered once."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        return (f'<figure class="ftcourse-diagram" data-diagram="{self.name}">'
                f'<img src="data:image/png;base64,{data}" alt="{html.escape(self.alt)}"></figure>')


# ---------------------------------------------------------------- drawing helpers

def _canvas(height: float) -> tuple[Figure, Axes]:
    """A WIDTH x height figure whose one axes measures inches from the bottom left, with no frame."""
    figure = Figure(figsize=(WIDTH, height), dpi=DPI)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    ax.axis("off")
    return figure, ax


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str, colour: Any,
         **text_options: Any) -> None:
    """A rounded box centred on (x, y), w x h inches, with `text` in its middle."""
    ax.add_patch(patches.FancyBboxPatch((x - w / 2, y - h / 2), w, h, facecolor=colour, edgecolor="#444444",
                                        boxstyle="round,pad=0,rounding_size=0.06", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=text_options.pop("fontsize", 8), **text_options)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float]) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": "#444444", "lw": 1.0,
                                                      "shrinkA": 0, "shrinkB": 0})


def _count(n: float) -> str:
    """A parameter count as the chapters say it: 65,536; 20.0 M; 6.74 B."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.1f} M" if n >= 1e7 else f"{n:,}"


def _gb(n: float) -> str:
    """Bytes in GB to one decimal, or to two significant digits when under 0.05 GB (not "0.0")."""
    return f"{n / GB:.1f}" if n >= 0.05 * GB else f"{n / GB:.2g}"


def _function_name(function: Callable[..., Any]) -> str:
    return f"{function.__module__}.{function.__name__}"


def _settings(method: Any) -> str:
    """A method config in a few words: "r=8, all-linear", "NF4, r=8, q_proj, v_proj"."""
    if isinstance(method, (LoRA, QLoRA)):
        targets = method.targets if isinstance(method.targets, str) else ", ".join(method.targets)
        quant = f"{method.quant_type.upper()}, " if isinstance(method, QLoRA) else ""
        return f"{quant}r={method.r}, {targets}"
    return "every weight trains" if isinstance(method, Full) else type(method).__name__


def _model_config(model: str) -> dict[str, Any]:
    if model not in REAL_MODELS:
        raise ValueError(f"Unknown model {model!r}; the diagrams size things on a config from "
                         f"ftcourse.params.REAL_MODELS: {', '.join(REAL_MODELS)}. Pass one of those names.")
    return REAL_MODELS[model]


def _check_shape(d_in: Any, d_out: Any, r: int) -> None:
    sizes = {"d_in": d_in, "d_out": d_out}
    problems = [f"{name} must be a positive int, got {value!r}" for name, value in sizes.items()
                if not (isinstance(value, int) and value >= 1)]
    if not problems and r > min(d_in, d_out):
        problems.append(f"LoRA rank r={r} exceeds min(d_in, d_out)={min(d_in, d_out)}, the largest rank "
                        f"B A can have; pick r <= {min(d_in, d_out)}")
    if problems:
        raise ValueError("Cannot draw the layer: " + "; ".join(problems) + ".")


# ---------------------------------------------------------------- 1. a LoRA layer

def lora_layer(config: LoRA = LORA, d_in: int = Q_PROJ[0], d_out: int = Q_PROJ[1]) -> Diagram:
    """One linear layer with LoRA: the frozen W0 beside the trainable A then B, times the scale.

    Shapes, counts and scale are read off a `LoRALinear` (a `DoRALinear` for DoRA) built on the
    meta device, so the picture shows what the package builds. Default size: Llama-2-7B's q_proj.
    """
    if not isinstance(config, LoRA):
        raise TypeError(f"lora_layer draws a LoRA config, got {type(config).__name__}; for a QLoRA config "
                        "pass its .lora, or draw qlora_memory_layout.")
    _check_shape(d_in, d_out, config.r)
    kind = DoRALinear if config.dora else LoRALinear
    layer = kind(nn.Linear(d_in, d_out, bias=False, device="meta"), config.r, config.alpha, config.dropout,
                 config.rslora)
    frozen = layer.base_layer.weight.numel()
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    (r, a_in), (b_out, _) = layer.lora_A.weight.shape, layer.lora_B.weight.shape
    rule = f"α/√r = {config.alpha:g}/√{r}" if config.rslora else f"α/r = {config.alpha:g}/{r}"
    scale = f"{layer.scaling:.3g}"
    # PiSSA starts A and B from W0's singular vectors instead of random and zero.
    a_init, b_init = ("random", "starts at zero") if config.init == "default" else ("from W0's SVD",) * 2
    extra = f" + {b_out:,} row lengths (DoRA)" if config.dora else ""

    figure, ax = _canvas(3.3)
    ax.text(0.15, 3.05, f"h = W0 x + {scale} · B A x        scale {rule} = {scale}", fontsize=10, va="center")
    ax.text(0.45, 1.65, f"x\n{a_in:,}", ha="center", va="center", fontsize=9)
    _arrow(ax, (0.75, 1.65), (1.25, 2.3))
    _arrow(ax, (0.75, 1.65), (1.25, 1.0))
    _box(ax, 2.85, 2.3, 3.1, 0.75, f"W0  frozen\n{b_out:,} × {a_in:,} = {frozen:,} weights", FROZEN,
         fontsize=9)
    # A narrows d_in down to r, B widens r back up to d_out: two trapezoids.
    for corners in ([(1.3, 0.6), (2.3, 0.88), (2.3, 1.12), (1.3, 1.4)],
                    [(2.9, 0.88), (3.9, 0.6), (3.9, 1.4), (2.9, 1.12)]):
        ax.add_patch(patches.Polygon(corners, facecolor=TRAINABLE, edgecolor="#444444", linewidth=0.8))
    for x, letter, text in ((1.75, "A", f"{r} × {a_in:,}\ntrainable, {a_init}"),
                            (3.45, "B", f"{b_out:,} × {r}\ntrainable, {b_init}")):
        ax.text(x, 1.0, letter, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(x, 0.5, text, ha="center", va="top", fontsize=8)
    _arrow(ax, (2.3, 1.0), (2.9, 1.0))
    ax.text(2.6, 1.1, f"r = {r}", ha="center", va="bottom", fontsize=8)
    for x, y, radius, text, size in ((4.55, 1.0, 0.26, f"× {scale}", 8), (5.45, 1.65, 0.2, "+", 12)):
        ax.add_patch(patches.Circle((x, y), radius, facecolor="white", edgecolor="#444444", linewidth=0.8))
        ax.text(x, y, text, ha="center", va="center", fontsize=size)
    _arrow(ax, (3.9, 1.0), (4.29, 1.0))
    _arrow(ax, (4.4, 2.3), (5.3, 1.78))
    _arrow(ax, (4.81, 1.0), (5.3, 1.52))
    _arrow(ax, (5.65, 1.65), (6.15, 1.65))
    ax.text(6.45, 1.65, f"h\n{b_out:,}", ha="center", va="center", fontsize=9)
    ax.text(0.15, 0.12, f"trainable: r·(d_in + d_out){extra} = {trainable:,}, {trainable / frozen:.2%} of "
            f"W0's {frozen:,}", fontsize=9, va="center", color="#7a3e00")
    alt = (f"A LoRA layer: the input x ({a_in:,} numbers) goes through the frozen weight W0 "
           f"({b_out:,} × {a_in:,} = {frozen:,} weights) and, beside it, through the trainable A "
           f"({r} × {a_in:,}, {a_init}) and B ({b_out:,} × {r}, {b_init}), whose product is scaled by "
           f"{rule} = {scale} and added to W0 x to give h. Trainable: r·(d_in + d_out){extra} = "
           f"{trainable:,} numbers, {trainable / frozen:.2%} of W0.")
    return Diagram("lora_layer", figure, alt)


# ---------------------------------------------------------------- 2. QLoRA's memory layout

def qlora_memory_layout(config: QLoRA = QLORA, d_in: int = Q_PROJ[0], d_out: int = Q_PROJ[1]) -> Diagram:
    """How QLoRA stores one weight: 4-bit codes two per byte in blocks, a scale per block (itself
    8-bit under double quantization), and the LoRA adapter beside them, in bytes per weight.

    The block drawn is quantized by `quant.quantize_4bit`; bytes per weight come from
    `quant.bits_per_parameter`, the layer's bytes from the memory model's `stored_4bit_bytes`,
    the adapter's dtype from a `LoRALinear` on a `qlora.Linear4bit`.
    """
    if not isinstance(config, QLoRA):
        raise TypeError(f"qlora_memory_layout draws a QLoRA config, got {type(config).__name__}.")
    _check_shape(d_in, d_out, config.r)
    n, block, nested, dq = d_in * d_out, DEFAULT_BLOCKSIZE, NESTED_BLOCKSIZE, config.double_quant
    code_bytes = math.log2(len(CODES[config.quant_type])) / 8          # 16 levels: 4 bits
    per_weight = {double: bits_per_parameter(block, double) / 8 for double in (False, True)}
    with torch.random.fork_rng(devices=[]):              # the probe's random init leaves the caller's RNG be
        probe = LoRALinear(Linear4bit.from_linear(nn.Linear(block, 2, bias=False)), 1, 1.0)
    adapter_dtype = probe.lora_A.weight.dtype
    adapter = config.r * (d_in + d_out) * adapter_dtype.itemsize / n    # bytes per weight of W0
    fp32, uint8, bf16 = torch.float32.itemsize, torch.uint8.itemsize, torch.bfloat16.itemsize
    qt = config.quant_type.upper()

    def four_bit(double: bool) -> dict[str, float]:
        return {"4-bit codes": code_bytes, "block scales": per_weight[double] - code_bytes}

    # (label, {part: bytes per weight}, how the bytes add up, bytes of the whole layer)
    bars = [("bfloat16 W0", {"16-bit weight": bf16}, "", n * bf16),
            (f"{qt}, fp32 absmax", four_bit(False), f"{code_bytes:g} + {fp32}/{block}",
             stored_4bit_bytes(n, False)),
            (f"{qt}, double quant", four_bit(True),
             f"{code_bytes:g} + {uint8}/{block} + {fp32}/{block * nested}", stored_4bit_bytes(n, True)),
            (f"QLoRA: + LoRA r={config.r}", {**four_bit(dq), "LoRA adapter": adapter},
             f"{per_weight[dq]:.4g} + {adapter:.4g}", stored_4bit_bytes(n, dq) + adapter * n)]
    figure, ax = _canvas(4.3)
    ax.text(0.15, 4.1, f"How QLoRA stores W0: {d_out:,} × {d_in:,} = {n:,} weights, in blocks of {block}",
            fontsize=10, va="center")
    _draw_block(ax, config, block, nested)
    _draw_bytes(figure.add_axes((1.55 / WIDTH, 0.45 / 4.3, 3.5 / WIDTH, 1.45 / 4.3)), bars, bf16)
    scales = (f"1 byte (an 8-bit code) plus one fp32 per {nested} blocks (double quantization)" if dq
              else f"{fp32} bytes (fp32)")
    alt = (f"QLoRA stores a weight matrix of {d_out:,} × {d_in:,} weights in blocks of {block}: each "
           f"weight becomes a 4-bit {qt} code, two per byte ({block // 2} bytes per block), and each block "
           f"keeps its absolute maximum in {scales}. Bytes per weight: " +
           "; ".join(f"{label}: {sum(sizes.values()):.4g} ({layer / 1e6:.2f} MB for the layer)"
                     for label, sizes, _, layer in bars) +
           f". The LoRA adapter beside the 4-bit weight is {str(adapter_dtype).removeprefix('torch.')}.")
    return Diagram("qlora_memory_layout", figure, alt)


def _draw_block(ax: Axes, config: QLoRA, block: int, nested: int) -> None:
    """One real block: 64 weights like a trained layer's, and the codes `quantize_4bit` stores."""
    code = CODES[config.quant_type]
    weights = torch.randn(block, generator=torch.Generator().manual_seed(0)) * 0.02
    quantized = quantize_4bit(weights, config.quant_type)
    absmax, packed = float(quantized.absmax[0]), quantized.packed.view(-1)
    indices = torch.stack([packed >> 4, packed & 0xF], 1).view(-1).long()   # high nibble first
    colours, left, width = colormaps["RdBu_r"], 1.35, 3.2
    # The same colour scale for both strips: a weight's colour is value / absmax, a code's its level.
    for y, values in ((3.45, weights / absmax), (2.75, code[indices])):
        for i, value in enumerate(values.tolist()):
            ax.add_patch(patches.Rectangle((left + i * width / block, y), width / block, 0.3,
                                           facecolor=colours(0.5 + value / 2), edgecolor="none"))
    for byte in range(block // 2 + 1):                                     # two codes in each byte
        x = left + byte * 2 * width / block
        ax.plot([x, x], [2.75, 3.05], color="#444444", linewidth=0.5)
    bits = int(math.log2(len(code)))
    ax.text(0.15, 3.6, f"one block:\n{block} weights", fontsize=8, va="center")
    bf16 = torch.bfloat16.itemsize
    ax.text(left + width + 0.1, 3.6, f"bfloat16: {block} × {bf16} B = {bf16 * block} B", fontsize=8,
            va="center")
    _arrow(ax, (left + width / 2, 3.4), (left + width / 2, 3.1))
    ax.text(left + width / 2 + 0.1, 3.25, f"÷ absmax {absmax:.4f}, nearest of {len(code)} "
            f"{config.quant_type.upper()} levels", fontsize=7.5, va="center")
    ax.text(0.15, 2.9, f"stored:\n{block * bits // 8} bytes,\n2 codes each", fontsize=8, va="center")
    first = " ".join(f"{int(b):02x}" for b in packed[:4])
    ax.text(left + width + 0.1, 2.9, f"{block} × {bits} bits = {block * bits // 8} B\nfirst bytes: {first} …",
            fontsize=8, va="center")
    ax.text(left, 2.5, f"+ the block's absmax: 1 byte (8-bit code); one fp32 per {nested} blocks"
            if config.double_quant else "+ the block's absmax: 4 bytes (fp32)", fontsize=8, va="center")


def _draw_bytes(ax: Axes, bars: list[tuple[str, dict[str, float], str, float]], largest: float) -> None:
    """Stacked bars of bytes per weight, each labelled with its sum and its layer's megabytes."""
    parts = {"16-bit weight": FROZEN, "4-bit codes": "#9e9e9e", "block scales": "#505050",
             "LoRA adapter": TRAINABLE}
    for row, (_, sizes, formula, layer) in enumerate(bars):
        start = 0.0
        for part, size in sizes.items():
            ax.barh(row, size, left=start, color=parts[part], height=0.6, label=part)
            start += size
        total = f"{formula} = {start:.4g}" if formula else f"{start:.4g}"
        ax.text(start + 0.03, row, f"{total} B; layer {layer / 1e6:.2f} MB", va="center", fontsize=7.5)
    ax.set_yticks(range(len(bars)), [label for label, *_ in bars])
    ax.invert_yaxis()
    ax.set_xlim(0, largest)
    ax.set_xlabel("bytes per weight of W0", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    handles = {label: handle for handle, label in zip(*ax.get_legend_handles_labels())}
    ax.legend(handles.values(), handles.keys(), fontsize=7.5, loc="lower left", bbox_to_anchor=(0, 1.0),
              ncols=4, frameon=False)


# ---------------------------------------------------------------- 3. the preference pipeline

def preference_pipeline() -> Diagram:
    """Base model -> SFT -> reward model -> RL against it, and DPO as the shortcut from SFT to the
    preferences, each stage named by the package function that runs it (read off the function
    objects, so a rename breaks this import rather than leaving a stale label)."""
    grpo, beta = GRPO(), DPO().beta
    reward_fn = f"{_function_name(as_reward_fn).removeprefix('ftcourse.')}()"
    # key: (title, function, what it learns from and how, box centre, box width in inches)
    stages = {"base": ("Base model", load_base, ["continues text,", "follows no instructions"],
                       (0.7, 2.5), 1.2),
              "sft": ("SFT", finetune, ["on instruction pairs;", "loss on the response"], (2.175, 2.5), 1.25),
              "reward": ("Reward model", train_reward_model,
                         ["on preference pairs;", bradley_terry_loss.__name__], (3.75, 2.5), 1.4),
              "rl": ("RL with the reward", train_grpo,
                     ["prompts scored by", reward_fn, f"GRPO, groups of {grpo.group_size}"],
                     (5.425, 2.5), 1.45),
              "dpo": ("DPO: the shortcut", train_dpo,
                      [f"on preference pairs; {dpo_loss.__name__}, beta {beta:g};",
                       "no reward model, no sampling"], (4.6, 0.75), 3.1)}
    figure, ax = _canvas(3.5)
    ax.text(0.1, 3.35, "Learning from preferences: two routes from the SFT model", fontsize=10, va="center")
    for key, (title, function, notes, (x, y), w) in stages.items():
        wide = key == "dpo"
        _box(ax, x, y, w, 0.95 if wide else 1.3, "", FROZEN if key == "base" else TRAINABLE)
        module, name = _function_name(function).rsplit(".", 1)
        top = y + (0.3 if wide else 0.47)
        ax.text(x, top, title, ha="center", va="center", fontsize=8.5, weight="bold")
        ax.text(x, top - 0.2, f"{module}.{name}()" if wide else f"{module}\n{name}()", ha="center", va="top",
                fontsize=7, family="monospace")
        ax.text(x, top - (0.4 if wide else 0.6), "\n".join(notes), ha="center", va="top", fontsize=7,
                linespacing=1.3)
    for left, right in (("base", "sft"), ("sft", "reward"), ("reward", "rl")):
        (x_left, _), (x_right, _) = stages[left][3], stages[right][3]
        _arrow(ax, (x_left + stages[left][4] / 2, 2.5), (x_right - stages[right][4] / 2, 2.5))
    _arrow(ax, (2.3, 1.85), (3.05, 0.9))                                  # the SFT model -> DPO
    _arrow(ax, (6.15, 2.5), (6.3, 2.5))
    _arrow(ax, (6.15, 0.75), (6.6, 2.2))
    ax.text(6.65, 2.5, "aligned\nmodel", ha="center", va="center", fontsize=8, weight="bold")
    name = {key: _function_name(stage[1]) for key, stage in stages.items()}
    alt = (f"The preference pipeline. A base model ({name['base']}) that continues text is first taught to "
           f"follow instructions by SFT on instruction pairs ({name['sft']}). From the SFT model, two routes "
           f"lead to an aligned model: train a reward model on preference pairs ({name['reward']}, "
           f"{bradley_terry_loss.__name__}), then improve the policy by RL against it ({name['rl']}, GRPO "
           f"with groups of {grpo.group_size} answers, which the reward model scores through "
           f"{_function_name(as_reward_fn)}); or take the shortcut, DPO on the preference pairs directly "
           f"({name['dpo']}, {dpo_loss.__name__} with beta {beta:g}), with no reward model and no sampling.")
    return Diagram("preference_pipeline", figure, alt)


# ---------------------------------------------------------------- 4. the decision ladder

def decision_ladder(model: str = MODEL, setup: Setup = SETUP) -> Diagram:
    """The rungs from prompting to retrieval to PEFT to full fine-tuning, cheapest at the bottom,
    each with what changes, what it costs and the package code behind it (book/ladder.md).

    The trained rungs are `retrieval.ladder_runs`' methods, costed by the memory model's peak for
    one training step of `model` (a name in `params.REAL_MODELS`) under `setup`.
    """
    config = _model_config(model)
    total = count_parameters(config).total
    runs = ladder_runs()
    trained = {rung: estimate(config, dataclasses.replace(setup, method=run.method))
               for rung, run in runs.items()}
    peft, full = trained["LoRA"], trained["full fine-tuning"]
    step = f"{model}, {setup.precision}, {setup.batch_size} × {setup.seq_len} tokens"
    ladder = ladder_runs.__name__
    # (rung, what changes, what it costs, the package code)
    rungs = [("1. Prompting", "the input: an instruction, examples, a rephrasing",
              "nothing trains; longer prompts at every call",
              f"{few_shot_prompt.__name__}(), {engineered_prompt.__name__}()"),
             ("2. Retrieval (RAG)", "the input: passages fetched from your documents",
              "an index to keep up to date; the model must read its context",
              f"{BM25.__name__}, {rag_prompt.__name__}()"),
             (f"3. PEFT: LoRA {_settings(runs['LoRA'].method)}",
              "a few new parameters beside the frozen model",
              f"trains {_count(peft.footprint.trainable)} ({peft.footprint.trainable / total:.2%}); "
              f"step peak {_gb(peft.peak)} GB; MBs per task", f"{ladder}()['LoRA']"),
             ("4. Full fine-tuning", "every weight",
              f"trains all {_count(full.footprint.trainable)}; step peak {_gb(full.peak)} GB; "
              "a whole model per task; most forgetting", f"{ladder}()['full fine-tuning']")]
    figure, ax = _canvas(4.4)
    ax.text(0.1, 4.2, "The decision ladder: climb only as far as you must", fontsize=10, va="center")
    for rail in (0.35, 0.75):
        ax.plot([rail, rail], [0.4, 3.95], color="#8a6d3b", linewidth=2.5, solid_capstyle="round")
    for i, (rung, changes, costs, code) in enumerate(rungs):
        y, shade = 0.75 + 0.9 * i, 0.93 - 0.12 * i                         # higher rungs: warmer, dearer
        ax.plot([0.35, 0.75], [y, y], color="#8a6d3b", linewidth=2.5)
        _box(ax, 3.95, y, 6.0, 0.78, "", (1.0, shade, shade * 0.8))
        ax.text(1.05, y + 0.22, rung, fontsize=9, weight="bold", va="center")
        ax.text(6.85, y + 0.22, code, fontsize=7, family="monospace", va="center", ha="right")
        ax.text(1.05, y - 0.02, f"changes: {changes}", fontsize=8, va="center")
        ax.text(1.05, y - 0.23, f"costs: {costs}", fontsize=8, va="center")
    ax.text(0.95, 0.05, f"step peak: the memory model's estimate for one training step of {step}.\n"
            f"{_function_name(climb_ladder)}() scores every rung on one task (chapter 8).", fontsize=7,
            va="bottom", color="#555555")
    alt = ("The decision ladder, cheapest rung first. " +
           " ".join(f"{rung}: changes {changes}; costs: {costs}; in the package: {code}."
                    for rung, changes, costs, code in rungs) +
           f" Step peaks are the memory model's for {step}.")
    return Diagram("decision_ladder", figure, alt)


# ---------------------------------------------------------------- 5. where each method intervenes

# One Llama decoder layer, top to bottom, by HF module name (the first row comes before layer 1).
LAYER_ROWS = ("embed_tokens", "input_layernorm", "q_proj", "k_proj", "v_proj", "softmax(q kᵀ) v", "o_proj",
              "post_attention_layernorm", "gate_proj", "up_proj", "SiLU(gate) · up", "down_proj")
METHODS = (PromptTuning(), PrefixTuning(), LoRA(), BottleneckAdapter(), IA3(), QLoRA())


def method_intervention(methods: Sequence[Any] = METHODS) -> Diagram:
    """Where each method touches one decoder layer: a row per module, a column per method.

    Targets and sizes come from the method configs (their defaults unless others are passed):
    `PromptTuning`, `PrefixTuning`, `LoRA`, `BottleneckAdapter`, `IA3`, `QLoRA`.
    `plots.plot_intervention_map` draws the whole stack; this is one layer up close.
    """
    if not methods:
        raise ValueError("method_intervention needs at least one method config, e.g. (LoRA(),).")
    columns = [_touches(method) for method in methods]
    linear = set(linear_shapes(REAL_MODELS[MODEL]))
    height, top, row_h = 4.95, 4.05, 0.3
    left, col_w = 2.0, (WIDTH - 2.05) / len(columns)
    figure, ax = _canvas(height)
    ax.text(0.1, height - 0.2, "Where each method touches one decoder layer", fontsize=10, va="center")
    y = {row: top - row_h * (i + 0.5) - 0.1 * (i > 0) for i, row in enumerate(LAYER_ROWS)}
    bottom = y["down_proj"] - row_h / 2 - 0.05
    layer_top = y["input_layernorm"] + row_h / 2 + 0.05
    ax.add_patch(patches.Rectangle((0.05, bottom), WIDTH - 0.1, layer_top - bottom, fill=False,
                                   linestyle="--", edgecolor="#888888", linewidth=0.8))
    ax.text(0.1, bottom - 0.05, "one decoder layer, repeated L times (the rows below embed_tokens); residual "
            "adds after o_proj and down_proj", fontsize=7, va="top", color="#555555")
    for row in LAYER_ROWS:                                               # weights grey, the rest white
        colour = FROZEN if row in linear | {"embed_tokens"} else "white"
        _box(ax, 1.0, y[row], 1.75, row_h - 0.07, row, colour, fontsize=7,
             family="monospace" if row.isidentifier() else None)
    palette = ("#c7e9c0", "#c6dbef", "#fdd0a2", "#dadaeb", "#fcbba1", "#fdae6b")
    for j, (title, detail, tags) in enumerate(columns):
        x = left + col_w * (j + 0.5)
        ax.text(x, top + 0.25, title.replace(" ", "\n"), ha="center", va="bottom", fontsize=8, weight="bold")
        ax.text(x, top + 0.22, detail, ha="center", va="top", fontsize=6.5)
        for row, tag in tags.items():
            _box(ax, x, y[row], col_w - 0.08, row_h - 0.07, tag, palette[j % len(palette)], fontsize=6.5)
    alt = ("One decoder layer of a Llama model, module by module (" + ", ".join(LAYER_ROWS) +
           "), and where each method touches it: " +
           "; ".join(f"{title} ({detail}): " + ", ".join(f"{tag} at {row}" for row, tag in tags.items())
                     for title, detail, tags in columns) + ".")
    return Diagram("method_intervention", figure, alt)


def _targets(method: Any, linear: Sequence[str]) -> list[str]:
    """The linear layers of one decoder layer that `method.targets` names, in layer order."""
    targets = method.targets
    if targets == "all-linear":
        return list(linear)
    if isinstance(targets, str):
        raise ValueError(f"{type(method).__name__}.targets={targets!r} is a regex; the diagram needs module "
                         f"names or 'all-linear' (names: {', '.join(linear)}).")
    if unknown := sorted(set(targets) - set(linear)):
        raise ValueError(f"{type(method).__name__}.targets {unknown} name no linear layer of a Llama decoder "
                         f"layer; available: {', '.join(linear)}.")
    return [name for name in linear if name in targets]


def _touches(method: Any) -> tuple[str, str, dict[str, str]]:
    """(column title, its settings, {module row: what the method does there}) for one method config."""
    linear = list(linear_shapes(REAL_MODELS[MODEL]))
    if isinstance(method, PromptTuning):
        n = method.num_virtual_tokens
        return "prompt tuning", f"{n} tokens", {"embed_tokens": f"+{n} vectors"}
    if isinstance(method, PrefixTuning):
        n = method.num_virtual_tokens
        return "prefix tuning", f"{n} per layer", {"k_proj": f"+{n} keys", "v_proj": f"+{n} values"}
    if isinstance(method, QLoRA):                 # every linear layer in 4 bits, LoRA on the targets
        targets = _targets(method, linear)
        return "QLoRA", f"{method.quant_type} + r={method.r}", {
            name: "4-bit + B A" if name in targets else "4-bit" for name in linear}
    if isinstance(method, LoRA):
        return "LoRA", f"r={method.r}", dict.fromkeys(_targets(method, linear), "+ B A")
    if isinstance(method, BottleneckAdapter):
        return "adapters", f"bottleneck d/{method.reduction_factor}", dict.fromkeys(
            _targets(method, linear), "adapter after")
    if isinstance(method, IA3):
        return "IA3", "scaling vectors", {name: "input × l" if name in method.feedforward else "output × l"
                                          for name in _targets(method, linear)}
    raise TypeError(f"method_intervention draws PromptTuning, PrefixTuning, LoRA, BottleneckAdapter, IA3 and "
                    f"QLoRA configs; got {type(method).__name__} (full fine-tuning would fill every row).")


# ---------------------------------------------------------------- 6. the memory of a training step

TERM_COLOURS = {"weights": FROZEN, "optimizer": "#7570b3", "checkpoints": "#a6d854", "gradients": "#e7298a",
                "activations": DATA, "loss": "#66a61e", "recompute": "#1b9e77", "backward": "#e6ab02"}


def training_step_memory(model: str = MODEL, setup: Setup = SETUP,
                         methods: Mapping[str, Any] | None = None) -> Diagram:
    """The memory of one training step at its peak, term by term, for full fine-tuning, LoRA and
    QLoRA of one model: stacked bars of the memory model's estimate (`ftcourse.memory.estimate`).

    Args:
        model: a config name from `ftcourse.params.REAL_MODELS`.
        setup: precision, optimizer, batch and sharding; its `method` is replaced by each of `methods`.
        methods: {label: method name or config}; default the chapters' recommended full, LoRA, QLoRA.
    """
    config = _model_config(model)
    methods = {label: get_method(method) for label, method in (methods or {
        "full fine-tuning": RECOMMENDED["full"][0], "LoRA": RECOMMENDED["lora"][0],
        "QLoRA": RECOMMENDED["qlora"][0]}).items()}
    peaks = {label: estimate(config, dataclasses.replace(setup, method=method)).peak_moment()
             for label, method in methods.items()}
    figure = Figure(figsize=(WIDTH, 1.3 + 0.55 * len(methods)), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    largest = max(sum(terms.values()) for _, terms in peaks.values()) / GB
    for row, (moment, terms) in enumerate(peaks.values()):
        start = 0.0
        for term, size in terms.items():
            ax.barh(row, size / GB, left=start, color=TERM_COLOURS[term], label=term, height=0.6,
                    edgecolor="white", linewidth=0.5)
            if size / GB > 0.1 * largest:                                  # wide enough to carry its number
                ax.text(start + size / GB / 2, row, f"{term}\n{_gb(size)}", ha="center", va="center",
                        fontsize=7)
            start += size / GB
        ax.text(start + 0.01 * largest, row, f"{_gb(start * GB)} GB\n{moment}", va="center", fontsize=7.5)
    ax.set_yticks(range(len(methods)), [f"{label}\n{_settings(method)}" for label, method in methods.items()],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, largest * 1.3)
    ax.set_xlabel(f"GB at the peak of one training step: {model}, {setup.precision}, {setup.optimizer}, "
                  f"batch {setup.batch_size} × {setup.seq_len} tokens", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    handles = {label: handle for handle, label in zip(*ax.get_legend_handles_labels())}
    ax.legend(handles.values(), handles.keys(), fontsize=7.5, loc="lower right", frameon=False)
    alt = (f"The memory of one training step of {model} ({setup.precision}, {setup.optimizer}, batch "
           f"{setup.batch_size} × {setup.seq_len} tokens) at its peak, as the memory model predicts it. " +
           " ".join(f"{label} ({_settings(methods[label])}): {_gb(sum(terms.values()))} GB {moment}: " +
                    " + ".join(f"{term} {_gb(size)}" for term, size in terms.items()) + "."
                    for label, (moment, terms) in peaks.items()))
    return Diagram("training_step_memory", figure, alt)
