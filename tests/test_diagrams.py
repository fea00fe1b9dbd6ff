"""The concept pictures show the package's own numbers, display with their alt text, and stay legible.

Each expected value is computed here from the package by another route than the picture takes
(a real layer, `params.count_lora_parameters`, the memory model's estimate), so a picture that
drifts from the implementation fails.
"""

import base64
import dataclasses
import html
import itertools
import math
import struct
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text
from torch import nn

from ftcourse import diagrams
from ftcourse.adapters import IA3, BottleneckAdapter
from ftcourse.diagrams import DIAGRAMS, SETUP, Diagram
from ftcourse.dpo import DPO
from ftcourse.lora import DoRALinear, LoRA, LoRALinear
from ftcourse.memory import GB, Setup, estimate
from ftcourse.memory.model import stored_4bit_bytes
from ftcourse.methods import RECOMMENDED, Full
from ftcourse.models import load_base
from ftcourse.params import REAL_MODELS, count_lora_parameters, count_parameters
from ftcourse.prompts import PrefixTuning, PromptTuning
from ftcourse.qlora import Linear4bit, QLoRA
from ftcourse.quant import bits_per_parameter
from ftcourse.retrieval import ladder_runs
from ftcourse.reward import train_reward_model
from ftcourse.rl import GRPO, train_grpo
from ftcourse.sft import finetune

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def drawn() -> dict[str, Diagram]:
    """Every diagram with its default arguments, drawn once."""
    return {name: getattr(diagrams, name)() for name in DIAGRAMS}


def texts(diagram: Diagram) -> str:
    """All the text a picture shows (labels, ticks, legends), one string per line."""
    return "\n".join(t.get_text() for t in diagram.figure.findobj(Text) if t.get_visible())


def placed(diagram: Diagram) -> list[tuple[str, float, float]]:
    """(text, x, y) of each label drawn on the picture's first axes, in its inch coordinates."""
    return [(t.get_text(), *t.get_position()) for t in diagram.figure.axes[0].texts]


def unused_ticks(diagram: Diagram) -> set[int]:
    """ids of the tick labels matplotlib keeps but never draws: beyond their axis' limits, or on an
    axes whose axis is switched off."""
    unused = set()
    for ax in diagram.figure.axes:
        for labels, limits, coordinate in ((ax.get_xticklabels(), ax.get_xlim(), 0),
                                           (ax.get_yticklabels(), ax.get_ylim(), 1)):
            low, high = sorted(limits)
            unused |= {id(t) for t in labels
                       if not (ax.axison and low <= t.get_position()[coordinate] <= high)}
    return unused


class _AltReader(HTMLParser):
    """The figure's data-diagram and its img's src and alt, as a browser would read them."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("figure", "img"):
            setattr(self, tag, dict(attrs))


# ---------------------------------------------------------------- every diagram

def test_diagrams_names_each_function_once(drawn):
    assert len(set(DIAGRAMS)) == len(DIAGRAMS) == 6
    assert {name: diagram.name for name, diagram in drawn.items()} == {name: name for name in DIAGRAMS}
    assert all(len(diagram.alt) > 100 for diagram in drawn.values())


def test_repr_html_holds_the_png_and_the_escaped_alt(drawn):
    for name, diagram in drawn.items():
        reader = _AltReader()
        reader.feed(diagram._repr_html_())
        assert reader.figure == {"class": "ftcourse-diagram", "data-diagram": name}
        assert reader.img["alt"] == diagram.alt, name                # unescaped by the parser: round trip
        header, data = reader.img["src"].split(",", 1)
        assert header == "data:image/png;base64"
        assert base64.b64decode(data) == diagram._repr_png_() == diagram.png
        assert diagram.png.startswith(PNG_SIGNATURE)


def test_repr_html_escapes_quotes_and_brackets_in_the_alt(drawn):
    alt = 'W0\'s "frozen" <weights> & more'
    diagram = Diagram("lora_layer", drawn["lora_layer"].figure, alt)
    assert f'alt="{html.escape(alt)}"' in diagram._repr_html_()
    reader = _AltReader()
    reader.feed(diagram._repr_html_())
    assert reader.img["alt"] == alt


def test_pngs_are_seven_inches_at_the_book_dpi(drawn):
    for name, diagram in drawn.items():
        width, height = struct.unpack(">II", diagram.png[16:24])    # the IHDR chunk
        assert width == round(diagrams.WIDTH * diagrams.DPI), name
        assert 2.5 * diagrams.DPI <= height <= 5.5 * diagrams.DPI, (name, height)


def text_problems(diagram: Diagram) -> list[str]:
    """Labels that stick out of the picture, and pairs of labels that share pixels, as drawn in the PNG."""
    renderer = FigureCanvasAgg(diagram.figure).get_renderer()
    diagram.figure.draw(renderer)
    edge = diagram.figure.bbox.padded(1)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in diagram.figure.findobj(Text)
             if t.get_visible() and t.get_text().strip() and id(t) not in unused_ticks(diagram)]
    problems = [f"{diagram.name}: {text!r} leaves the picture" for text, box in boxes
                if not (edge.x0 <= box.x0 and box.x1 <= edge.x1 and edge.y0 <= box.y0 and box.y1 <= edge.y1)]
    # Shrunk a little: the boxes include a line's leading, which may touch the next line's.
    inked = [(text, box.shrunk(0.98, 0.9)) for text, box in boxes]
    pairs = itertools.combinations(inked, 2)
    return problems + [f"{diagram.name}: {a!r} overlaps {b!r}" for (a, box_a), (b, box_b) in pairs
                       if box_a.overlaps(box_b)]


def test_no_text_overlaps_or_leaves_the_picture(drawn):
    problems = [problem for diagram in drawn.values() for problem in text_problems(diagram)]
    assert not problems, "\n".join(problems)


def test_text_problems_finds_planted_overlaps_and_overflow():
    figure, ax = diagrams._canvas(2.0)
    ax.text(1.0, 1.0, "first label")
    ax.text(1.2, 1.0, "second label")
    ax.text(6.8, 0.5, "runs off the right edge")
    assert text_problems(Diagram("lora_layer", figure, "planted")) == [
        "lora_layer: 'runs off the right edge' leaves the picture",
        "lora_layer: 'first label' overlaps 'second label'"]


def test_diagrams_do_not_go_through_pyplot(drawn):
    """pyplot would show each figure a second time in Jupyter, beside the Diagram's own display."""
    assert plt.get_fignums() == []


def test_drawing_leaves_the_global_random_state_alone():
    # qlora_memory_layout builds (and randomly initialises) a real 4-bit LoRA layer to read its dtype.
    for draw in (diagrams.lora_layer, diagrams.qlora_memory_layout):
        before = torch.random.get_rng_state()
        draw()
        assert torch.equal(before, torch.random.get_rng_state()), draw.__name__


def test_unknown_model_is_refused_with_the_known_names():
    for draw in (diagrams.decision_ladder, diagrams.training_step_memory):
        with pytest.raises(ValueError, match=r"Unknown model 'GPT-9'.*REAL_MODELS: SmolLM2-135M,.*LLaMA-65B"):
            draw("GPT-9")


# ---------------------------------------------------------------- 1. a LoRA layer

@pytest.mark.parametrize("config", [LoRA(r=4, alpha=16), LoRA(r=16, alpha=8, rslora=True),
                                    LoRA(r=2, alpha=4, dora=True)], ids=["lora", "rslora", "dora"])
def test_lora_layer_shows_the_layers_scale_and_counts(config):
    d_in, d_out = 96, 64
    layer = (DoRALinear if config.dora else LoRALinear)(nn.Linear(d_in, d_out), config.r, config.alpha,
                                                        rslora=config.rslora)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == config.r * (d_in + d_out) + (d_out if config.dora else 0)
    diagram = diagrams.lora_layer(config, d_in, d_out)
    shown = texts(diagram)
    weights = d_in * d_out
    for expected in (f"{layer.scaling:.3g} · B A x", f"= {trainable:,}", f"{d_out} × {d_in} = {weights:,}",
                     f"{config.r} × {d_in}", f"{d_out} × {config.r}", f"{trainable / weights:.2%}"):
        assert expected in shown, (expected, shown)
    for expected in (f"= {layer.scaling:.3g}", f"{trainable:,} numbers", f"{d_in * d_out:,} weights"):
        assert expected in diagram.alt, (expected, diagram.alt)
    assert ("α/√r" in shown) == config.rslora and "starts at zero" in shown


def test_lora_layer_default_is_llama_q_proj(drawn):
    d_in, d_out = REAL_MODELS["Llama-2-7B"]["hidden_size"], REAL_MODELS["Llama-2-7B"]["hidden_size"]
    assert f"{8 * (d_in + d_out):,}" in texts(drawn["lora_layer"])
    assert "α/r = 16/8 = 2" in texts(drawn["lora_layer"])


def test_lora_layer_rejects_bad_shapes_and_configs():
    with pytest.raises(ValueError, match=r"r=16 exceeds min\(d_in, d_out\)=8.*pick r <= 8"):
        diagrams.lora_layer(LoRA(r=16), d_in=8, d_out=64)
    with pytest.raises(ValueError, match=r"d_in must be a positive int, got 0; d_out must be .* got 2.5"):
        diagrams.lora_layer(LoRA(), d_in=0, d_out=2.5)
    with pytest.raises(TypeError, match=r"draws a LoRA config, got QLoRA.*pass its \.lora"):
        diagrams.lora_layer(QLoRA())


# ---------------------------------------------------------------- 2. QLoRA's memory layout

def bar_sums(ax) -> list[float]:
    """The total length of each row of a horizontal stacked bar chart, top row first."""
    rows: dict[float, float] = {}
    for bar in ax.patches:
        key = round(bar.get_y() + bar.get_height() / 2, 6)
        rows[key] = rows.get(key, 0.0) + bar.get_width()
    return [rows[key] for key in sorted(rows)]


@pytest.mark.parametrize("config", [QLoRA(), QLoRA(r=64, double_quant=False, quant_type="fp4")],
                         ids=["nf4-double-quant", "fp4"])
def test_qlora_layout_shows_the_packages_bytes_per_weight(config):
    d_in, d_out = 256, 128
    n = d_in * d_out
    probe = LoRALinear(Linear4bit.from_linear(nn.Linear(64, 8)), 2, 4.0)    # a QLoRA adapter, as built
    adapter = config.r * (d_in + d_out) * probe.lora_A.weight.element_size() / n
    per_weight = bits_per_parameter(64, config.double_quant) / 8
    diagram = diagrams.qlora_memory_layout(config, d_in, d_out)
    expected = [torch.bfloat16.itemsize, bits_per_parameter(64, False) / 8, bits_per_parameter(64, True) / 8,
                per_weight + adapter]
    assert bar_sums(diagram.figure.axes[1]) == pytest.approx(expected, rel=1e-12)
    shown = texts(diagram)
    assert "0.5 + 4/64 = 0.5625 B" in shown and "0.5 + 1/64 + 4/16384 = 0.5159 B" in shown
    for layer_bytes in (stored_4bit_bytes(n, False), stored_4bit_bytes(n, True),
                        stored_4bit_bytes(n, config.double_quant) + adapter * n):
        assert f"layer {layer_bytes / 1e6:.2f} MB" in shown
        assert f"({layer_bytes / 1e6:.2f} MB for the layer)" in diagram.alt
    assert f"{per_weight + adapter:.4g}" in diagram.alt and config.quant_type.upper() in diagram.alt
    assert ("fp32 per 256 blocks" in shown) == config.double_quant


def test_qlora_layout_rejects_other_configs_and_ranks():
    with pytest.raises(TypeError, match="draws a QLoRA config, got LoRA"):
        diagrams.qlora_memory_layout(LoRA())
    with pytest.raises(ValueError, match=r"r=128 exceeds min\(d_in, d_out\)=64"):
        diagrams.qlora_memory_layout(QLoRA(r=128), d_in=64, d_out=64)


# ---------------------------------------------------------------- 3. the preference pipeline

def test_preference_pipeline_names_the_function_of_each_stage(drawn):
    diagram = drawn["preference_pipeline"]
    shown = texts(diagram)
    for function in (load_base, finetune, train_reward_model, train_grpo):
        assert f"{function.__module__}\n{function.__name__}()" in shown, function
        assert f"{function.__module__}.{function.__name__}" in diagram.alt
    assert "ftcourse.dpo.train_dpo()" in shown and "ftcourse.dpo.train_dpo" in diagram.alt
    assert "reward.as_reward_fn()" in shown
    assert f"beta {DPO().beta:g}" in shown and f"beta {DPO().beta:g}" in diagram.alt
    assert f"groups of {GRPO().group_size}" in shown and f"groups of {GRPO().group_size}" in diagram.alt


# ---------------------------------------------------------------- 4. the decision ladder

def test_decision_ladder_climbs_from_cheapest_and_costs_the_trained_rungs(drawn):
    diagram = drawn["decision_ladder"]
    rungs = sorted((y, text) for text, _, y in placed(diagram) if text[:2] in ("1.", "2.", "3.", "4."))
    assert [text[:2] for _, text in rungs] == ["1.", "2.", "3.", "4."]      # bottom to top: dearer
    assert "Prompting" in rungs[0][1] and "Retrieval" in rungs[1][1] and "Full" in rungs[3][1]
    config = REAL_MODELS["Llama-2-7B"]
    lora = ladder_runs()["LoRA"].method
    trainable = count_lora_parameters(config, lora)
    shown = texts(diagram)
    assert f"trains {trainable / 1e6:.1f} M ({trainable / count_parameters(config).total:.2%})" in shown
    for method in (lora, "full"):
        peak = estimate(config, dataclasses.replace(SETUP, method=method)).peak
        assert f"step peak {peak / GB:.1f} GB" in shown and f"step peak {peak / GB:.1f} GB" in diagram.alt


# ---------------------------------------------------------------- 5. where each method intervenes

def cells(diagram: Diagram) -> dict[str, dict[str, str]]:
    """{column title: {row (module name): the tag drawn in that row}}, read off the picture by position."""
    labels = placed(diagram)
    rows = {round(y, 6): text for text, x, y in labels if x == 1.0}
    methods = ("prompt tuning", "prefix tuning", "LoRA", "adapters", "IA3", "QLoRA")
    titles = {round(x, 6): text.replace("\n", " ") for text, x, _ in labels
              if text.replace("\n", " ") in methods}
    table: dict[str, dict[str, str]] = {title: {} for title in titles.values()}
    for text, x, y in labels:
        if round(x, 6) in titles and round(y, 6) in rows:
            table[titles[round(x, 6)]][rows[round(y, 6)]] = text
    return table


def test_method_intervention_marks_each_configs_targets(drawn):
    table = cells(drawn["method_intervention"])
    linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    n_prompt, n_prefix = PromptTuning().num_virtual_tokens, PrefixTuning().num_virtual_tokens
    assert table["prompt tuning"] == {"embed_tokens": f"+{n_prompt} vectors"}
    assert table["prefix tuning"] == {"k_proj": f"+{n_prefix} keys", "v_proj": f"+{n_prefix} values"}
    assert set(table["LoRA"]) == set(LoRA().targets)
    assert set(table["adapters"]) == set(BottleneckAdapter().targets)
    assert table["IA3"] == {name: "input × l" if name in IA3().feedforward else "output × l"
                            for name in IA3().targets}
    assert table["QLoRA"] == dict.fromkeys(linear, "4-bit + B A")          # QLoRA's default: all-linear
    assert "k_proj" not in table["LoRA"] and "q_proj" not in table["adapters"]


def test_method_intervention_draws_the_configs_it_is_given():
    diagram = diagrams.method_intervention([LoRA(targets="all-linear"), QLoRA(targets=("q_proj",))])
    table = cells(diagram)
    assert len(table["LoRA"]) == 7
    assert table["QLoRA"]["q_proj"] == "4-bit + B A" and table["QLoRA"]["down_proj"] == "4-bit"
    assert "+ B A at down_proj" in diagram.alt


def test_method_intervention_rejects_what_it_cannot_draw():
    with pytest.raises(TypeError, match="got Full"):
        diagrams.method_intervention([Full()])
    with pytest.raises(ValueError, match=r"LoRA.targets \['attn'\] name no linear layer.*available: q_proj"):
        diagrams.method_intervention([LoRA(targets=("attn",))])
    with pytest.raises(ValueError, match=r"LoRA.targets='\.\*q_proj' is a regex"):
        diagrams.method_intervention([LoRA(targets=".*q_proj")])
    with pytest.raises(ValueError, match="at least one method"):
        diagrams.method_intervention([])


# ---------------------------------------------------------------- 6. the memory of a training step

def test_the_peak_moments_terms_add_up_to_the_peak():
    moments = set()
    for model, setup in itertools.product(("Llama-2-7B", "SmolLM2-135M"), [
            SETUP, Setup(gradient_checkpointing=True), Setup(precision="bf16", batch_size=8, padding=True)]):
        for method in ("full", RECOMMENDED["lora"][0], RECOMMENDED["qlora"][0], PromptTuning()):
            result = estimate(REAL_MODELS[model], dataclasses.replace(setup, method=method))
            moment, terms = result.peak_moment()
            e = result
            in_a_layer = e.activations + e.recompute + e.backward + e.gradients * setup.gradient_checkpointing
            assert sum(terms.values()) == pytest.approx(e.weights + e.optimizer + e.checkpoints + max(
                e.activations + e.loss, in_a_layer, e.gradients), rel=1e-12), (model, setup, method)
            assert set(terms) <= set(result.as_dict()) and all(size > 0 for size in terms.values())
            moments.add(moment)
    assert len(moments) == 3, f"every moment should win somewhere: {moments}"


def test_training_step_memory_bars_are_the_memory_models_terms(drawn):
    diagram = drawn["training_step_memory"]
    config = REAL_MODELS["Llama-2-7B"]
    ax = diagram.figure.axes[0]
    drawn_bars = {(round(bar.get_y() + bar.get_height() / 2), container.get_label()): bar.get_width()
                  for container in ax.containers for bar in container}
    expected = {}
    for row, method in enumerate(("full", "lora", "qlora")):
        result = estimate(config, dataclasses.replace(SETUP, method=RECOMMENDED[method][0]))
        moment, terms = result.peak_moment()
        expected |= {(row, term): size / GB for term, size in terms.items()}
        assert f"{result.peak / GB:.1f} GB\n{moment}" in texts(diagram)
        assert f"{result.peak / GB:.1f} GB {moment}" in diagram.alt
    assert drawn_bars.keys() == expected.keys()
    for key, width in expected.items():
        assert drawn_bars[key] == pytest.approx(width, rel=1e-12), key
    full = estimate(config, SETUP)
    assert f"optimizer {full.optimizer / GB:.1f}" in diagram.alt       # Adam's moments dominate full FT


def test_training_step_memory_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="Unknown method 'lora-9'; available methods: full, lora"):
        diagrams.training_step_memory(methods={"mystery": "lora-9"})


def test_gigabytes_keep_two_digits_below_a_tenth():
    assert diagrams._gb(13.48 * GB) == "13.5" and diagrams._gb(0.0123 * GB) == "0.012"
    assert math.isclose(float(diagrams._gb(0.0004 * GB)), 0.0004)
