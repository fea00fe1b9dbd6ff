"""Plots that chapters share: loss curves, and scores with their confidence intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _axes(ax: Any = None, figsize: tuple[float, float] = (6, 3.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start)."""
    values = np.asarray(values, dtype=float)
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (cumulative[1:] - cumulative[starts]) / (np.arange(1, len(values) + 1) - starts)


def plot_history(result: Any, ax: Any = None, label: str | None = None, window: int = 10,
                 eval_key: str | None = None):
    """Training loss per step (smoothed over `window` steps); evaluations as points if asked."""
    ax = _axes(ax)
    steps = [h["step"] for h in result.history]
    ax.plot(steps, smooth([h["loss"] for h in result.history], window), label=label or "training loss")
    if eval_key and result.evals:
        ax.plot([e["step"] for e in result.evals], [e[eval_key] for e in result.evals], "o--",
                label=eval_key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    return ax


def plot_scores(cis: Mapping[str, Any], ax: Any = None, ylabel: str = "score", title: str | None = None):
    """One bar per entry with its confidence interval as an error bar (`ftcourse.evaluate.CI`)."""
    ax = _axes(ax)
    names = list(cis)
    estimates = np.array([cis[n].estimate for n in names])
    errors = np.array([[cis[n].estimate - cis[n].low for n in names],
                       [cis[n].high - cis[n].estimate for n in names]])
    ax.bar(names, estimates, yerr=errors, capsize=6, color="tab:blue", alpha=0.8)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax



def plot_quality_against_parameters(results: Mapping[str, Mapping[str, Any]], tables: Mapping[str, Any]):
    """One panel per task: each method's score, with its 95% interval, against its trainable
    parameters (log scale). `results[task][method]` are `experiments.Trained` runs, `tables[task]`
    their `method_table`. Returns (figure, axes)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), layout="constrained",
                             sharey=True, squeeze=False)
    for ax, (task, runs) in zip(axes[0], results.items()):
        for name, run in runs.items():
            ci = run.score.ci
            ax.errorbar(tables[task].loc[name, "trainable"], ci.estimate, yerr=[[ci.estimate - ci.low],
                        [ci.high - ci.estimate]], fmt="o", capsize=4, label=name)
        ax.set(xscale="log", xlabel="trainable parameters (log scale)", title=f"{task} ({run.score.metric})")
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].set_ylabel("score (95% CI)")
    axes[0, -1].legend(fontsize=8)
    return fig, axes[0]

# Where each fine-tuning method changes the model: (method, what it does, the part it touches, the
# height of its label in the figure; the parts sit at embeddings 1.0, attention 2.2, FFN 3.4).
INTERVENTIONS = (
    ("full fine-tuning", "every weight trains", "all", 4.7),
    ("LoRA (all linear)", "low-rank updates of attention and FFN", "ffn", 3.9),
    ("IA3", "learned scaling of k, v and the FFN", "ffn", 3.4),
    ("adapters", "small layers inserted after attention / FFN", "ffn", 2.9),
    ("LoRA (q, v)", "low-rank updates of q_proj, v_proj", "attention", 2.4),
    ("prefix tuning", "learned keys/values at every layer", "attention", 1.95),
    ("prompt tuning", "learned vectors prepended to the input", "embeddings", 1.0),
)


def plot_intervention_map(ax: Any = None):
    """The decoder as a stack (embeddings, attention -> FFN x L, LM head) and where each method
    of the later chapters intervenes."""
    import matplotlib.patches as patches

    ax = _axes(ax, figsize=(9, 5))
    boxes = {"head": (4.6, "LM head + final norm", "tab:gray"),
             "ffn": (3.4, "FFN (gate, up, down)", "tab:orange"),
             "attention": (2.2, "Attention (q, k, v, o)", "tab:blue"),
             "embeddings": (1.0, "token embeddings", "tab:green")}
    for y, text, colour in boxes.values():
        ax.add_patch(patches.FancyBboxPatch((0.2, y - 0.35), 3.2, 0.7, boxstyle="round,pad=0.05",
                                            facecolor=colour, alpha=0.25, edgecolor=colour))
        ax.text(1.8, y, text, ha="center", va="center", fontsize=10)
    ax.add_patch(patches.Rectangle((0.05, 1.7), 3.5, 2.2, fill=False, linestyle="--", edgecolor="black"))
    ax.text(0.1, 3.95, "x L layers (residual stream)", fontsize=9, va="bottom")
    targets = {"embeddings": 1.0, "attention": 2.2, "ffn": 3.4, "all": 4.6}
    for method, what, part, y in INTERVENTIONS:
        ax.annotate("", xy=(3.5, targets[part]), xytext=(4.6, y),
                    arrowprops={"arrowstyle": "->", "color": "dimgray", "lw": 0.8})
        ax.text(4.65, y, f"{method}: {what}", va="center", fontsize=9)
    ax.set_xlim(0, 10)
    ax.set_ylim(0.4, 5.2)
    ax.axis("off")
    return ax


def plot_parameter_shares(counts: Mapping[str, Any], ax: Any = None):
    """Stacked horizontal bars: each model's parameters split into embeddings (+ untied head),
    attention, FFN and norms (`ftcourse.params.ParameterCount` per model), with two-thirds marked."""
    ax = _axes(ax, figsize=(8, 3.8))
    names = list(counts)
    left = np.zeros(len(names))
    parts = [("embeddings + head", "tab:green", lambda c: c.embeddings + c.lm_head),
             ("attention", "tab:blue", lambda c: c.attention), ("FFN", "tab:orange", lambda c: c.ffn),
             ("norms", "tab:gray", lambda c: c.norms)]
    for label, colour, size in parts:
        share = np.array([size(counts[n]) / counts[n].total for n in names])
        ax.barh(names, share, left=left, color=colour, label=label)
        left += share
    ax.axvline(2 / 3, color="black", linestyle="--", linewidth=1, label="two-thirds")
    ax.set_xlabel("share of all parameters")
    ax.legend(loc="lower left", bbox_to_anchor=(1.0, 0.0))
    ax.invert_yaxis()
    return ax


def plot_attention(attentions: Sequence[Any], title: str = "", max_layers: int = 4, max_heads: int = 4):
    """A grid of heat maps, one per (layer, head), of attention weights (layers of (1, H, T, T)):
    the first `max_layers` layers and `max_heads` heads (a real model has hundreds)."""
    import matplotlib.pyplot as plt

    layers, heads = min(len(attentions), max_layers), min(attentions[0].shape[1], max_heads)
    fig, axes = plt.subplots(layers, heads, figsize=(2.2 * heads, 2.2 * layers), layout="constrained",
                             squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            ax.imshow(attentions[layer][0, head].float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_ablation(intact: Any, ablated_cis: Mapping[tuple[int, str], Any], ax: Any = None):
    """Recall per layer with its attention or its FFN switched off (CIs), beside the intact model."""
    ax = _axes(ax, figsize=(6, 3.2))
    layers = sorted({layer for layer, _ in ablated_cis})
    x = np.arange(len(layers))
    for offset, part, colour in [(-0.2, "attention", "tab:blue"), (0.2, "ffn", "tab:orange")]:
        cis = [ablated_cis[layer, part] for layer in layers]
        ax.bar(x + offset, [c.estimate for c in cis], width=0.4, color=colour, label=f"{part} off",
               yerr=[[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]], capsize=3)
    ax.axhline(intact.estimate, color="black", linestyle="--", label="intact")
    ax.set_xticks(x, [f"layer {i}" for i in layers])
    ax.set_ylabel("facts recalled (95% CI)")
    ax.legend(fontsize=8)
    return ax
