"""Evaluation: task metrics per item, perplexity, intervals and paired tests, contamination, scoring.

- `metrics`: exact match, "mentions the answer", ROUGE-L, macro-F1, one score per item;
- `stats`: bootstrap intervals (`bootstrap_ci`) and paired tests of two models (`paired_comparison`);
- `likelihood`: perplexity, with an interval over examples; the likelihood of each answer of a
  multiple-choice question;
- `leakage`: contamination, test items already in the training data;
- `scoring`: a model's answers on a task (generated, or chosen by likelihood), scored, and
  results as a tidy table;
- `harness`: EleutherAI's lm-evaluation-harness on our models and tasks, the twin of `scoring`;
- `judge`: LLM-as-judge, pairwise in both orders, and Cohen's kappa for the agreement of raters.
"""

from ftcourse.evaluate.judge import (
    LabelAgreement,
    PairwiseJudgments,
    agreement_with_labels,
    cohen_kappa,
    judge_both_orders,
    judge_margins,
    judge_prompt,
)
from ftcourse.evaluate.leakage import contamination, ngrams
from ftcourse.evaluate.likelihood import choice_logprobs, continuation_example, perplexity, perplexity_ci
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
from ftcourse.evaluate.scoring import (
    TaskScore,
    forgetting,
    recall_accuracy,
    save_table,
    score_choices,
    score_task,
    tidy,
)
from ftcourse.evaluate.stats import CI, Comparison, bootstrap_ci, holm, paired_comparison

__all__ = ["CI", "METRICS", "Comparison", "LabelAgreement", "PairwiseJudgments", "TaskScore", "accuracy",
           "agreement_with_labels", "bootstrap_ci", "choice_logprobs", "cohen_kappa", "contamination",
           "continuation_example", "exact_match", "forgetting", "holm", "judge_both_orders", "judge_margins",
           "judge_prompt", "macro_f1", "mentions_answer", "ngrams", "normalize", "paired_comparison",
           "perplexity", "perplexity_ci", "recall_accuracy", "rouge_l", "save_table", "score_choices",
           "score_task", "tidy", "words"]
