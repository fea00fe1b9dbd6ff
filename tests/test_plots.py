"""The shared plots draw what they are given: each point where its numbers put it."""

from types import SimpleNamespace

import matplotlib
import pandas as pd

from ftcourse.evaluate import CI
from ftcourse.plots import plot_quality_against_parameters

matplotlib.use("Agg")


def run(estimate: float, low: float, high: float, metric: str) -> SimpleNamespace:
    return SimpleNamespace(score=SimpleNamespace(ci=CI(estimate, low, high), metric=metric))


def test_quality_against_parameters_puts_each_method_at_its_count_and_score():
    results = {"routing": {"IA3": run(0.9, 0.8, 1.0, "accuracy"), "LoRA": run(0.5, 0.4, 0.6, "accuracy")},
               "describe": {"IA3": run(0.7, 0.6, 0.8, "rouge_l"), "LoRA": run(0.95, 0.9, 1.0, "rouge_l")}}
    tables = {task: pd.DataFrame({"trainable": [2048, 77824]}, index=["IA3", "LoRA"]) for task in results}
    fig, axes = plot_quality_against_parameters(results, tables)
    assert [ax.get_title() for ax in axes] == ["routing (accuracy)", "describe (rouge_l)"]
    for ax, runs in zip(axes, results.values()):
        points = [bar.lines[0].get_xydata()[0].tolist() for bar in ax.containers]   # one errorbar each
        assert points == [[2048, runs["IA3"].score.ci.estimate], [77824, runs["LoRA"].score.ci.estimate]]
        assert ax.get_xscale() == "log"
    assert axes[0].get_ylabel() == "score (95% CI)"
    assert [text.get_text() for text in axes[-1].get_legend().get_texts()] == ["IA3", "LoRA"]
