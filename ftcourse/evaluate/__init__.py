"""Evaluation: task metrics per item, perplexity, intervals and paired tests, contamination, scoring.

- `metrics`: exact match, "mentions the answer", ROUGE-L, macro-F1, one score per item;
- `stats`: bootstrap intervals (`bootstrap_ci`) and paired tests of two models (`paired_comparison`);
- `likelihood`: perplexity, with an interval over examples;
- `leakage`: contamination, test items already in the training data;
- `scoring`: a model's answers on a task, scored, and results as a tidy table.
"""

from ftcourse.evaluate.leakage import contamination, ngrams
from ftcourse.evaluate.likelihood import perplexity, perplexity_ci
from ftcourse.evaluate.metrics import (
    METRICS,
    accuracy,
    exact_match,
    macro_f1,
    mentions_answer,
    normalize,
    rouge_l,
    words,
)
from ftcourse.evaluate.scoring import TaskScore, forgetting, recall_accuracy, save_table, score_task, tidy
from ftcourse.evaluate.stats import CI, Comparison, bootstrap_ci, holm, paired_comparison

__all__ = ["CI", "METRICS", "Comparison", "TaskScore", "accuracy",
           "bootstrap_ci", "contamination", "exact_match", "forgetting", "holm", "macro_f1",
           "mentions_answer", "ngrams", "normalize", "paired_comparison", "perplexity", "perplexity_ci",
           "recall_accuracy", "rouge_l", "save_table", "score_task", "tidy", "words"]
