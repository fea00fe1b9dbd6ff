"""Exercises on evaluation (chapter 08_evaluation): a bootstrap interval, McNemar's exact test, contamination;
predicting the question-answer format without examples; an open experiment on how many passages RAG needs.

Each check compares the learner's function with `ftcourse.evaluate` (`bootstrap_ci`,
`paired_comparison`, `contamination`) on seeded scores and fixed texts; common mistakes are named
in the message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from ftcourse.evaluate import bootstrap_ci, contamination, ngrams, paired_comparison, words
from ftcourse.exercises.core import ExerciseFailed, exercise, expect_number
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict


def bootstrap_mean_ci(scores: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score: resample the items with replacement many
    times; the middle `confidence` of the resampled means is the interval."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    resamples = rng.integers(0, n, size=(n_resamples, n))     # each row: n items drawn with replacement
    means = scores[resamples].mean(axis=1)
    tail = (1 - confidence) / 2 * 100                         # percent left out on each side
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_p_value(wins: int, losses: int) -> float:
    """Exact two-sided McNemar p-value: only items where two models disagree count, and if they
    were equally good each would be a fair coin flip, so min(wins, losses) ~ Binomial(n, 1/2)."""
    n = wins + losses
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n     # P(X <= k)
    return min(1.0, 2 * tail)                                    # both tails; they overlap if wins == losses


def ngram_overlap(test_text: str, train_texts: list[str], n: int) -> float:
    """Share of the test item's distinct word n-grams found in some training text: a high share
    means the model may have read the item, so its score there measures memory."""
    def ngrams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z0-9]+", text.lower())        # lower-case words, punctuation dropped
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    seen = set().union(*(ngrams(text) for text in train_texts))   # each text alone: none spans two
    test_ngrams = ngrams(test_text)
    return len(test_ngrams & seen) / len(test_ngrams)


# ---------------------------------------------------------------- hidden tests

def _as_pair(got: object, what: str) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in got)
    except (TypeError, ValueError):
        raise ExerciseFailed(f"{what}: return two numbers (low, high), got {got!r}.") from None
    return low, high


@exercise(chapter="08_evaluation", solution=bootstrap_mean_ci,
          task="Percentile bootstrap confidence interval (low, high) of the mean score, with the "
               "resample indices drawn as rng.integers(0, n, size=(n_resamples, n)).")
def check_bootstrap_mean_ci(answer: Callable) -> None:
    """Compare with `bootstrap_ci` on graded and on 0/1 scores, at 95% and 90% confidence."""
    rng = np.random.default_rng(11)
    for scores, n_resamples, confidence, seed in [(rng.random(40) ** 2, 2000, 0.95, 3),
                                                  ((rng.random(60) < 0.7).astype(float), 1000, 0.90, 7)]:
        want = bootstrap_ci(scores, n_resamples=n_resamples, confidence=confidence, seed=seed)
        what = f"bootstrap_mean_ci on {len(scores)} scores, {confidence:.0%} confidence"
        got = _as_pair(answer(scores.copy(), n_resamples, confidence, seed), what)
        tail = (1 - confidence) / 2 * 100
        indices = np.random.default_rng(seed).integers(0, len(scores), size=(n_resamples, len(scores)))
        means = scores[indices].mean(axis=1)
        mistakes = {
            "put 1 - confidence in each tail, which makes the interval narrower than asked; each "
            "tail gets (1 - confidence) / 2, e.g. 2.5% and 97.5% for 95%.":
                np.percentile(means, [2 * tail, 100 - 2 * tail]),
            "took percentiles of the scores themselves; take them of the resampled means.":
                np.percentile(scores, [tail, 100 - tail]),
            "resampled without replacement: every resample then holds the same items and the interval "
            "shrinks to the mean. Draw with replacement.": [scores.mean(), scores.mean()],
        }
        if np.allclose(got, [want.low, want.high], rtol=0, atol=1e-12):
            continue
        for mistake, value in mistakes.items():
            if np.allclose(got, value, rtol=0, atol=1e-12):
                raise ExerciseFailed(f"{what}: {mistake}")
        near = np.allclose(got, [want.low, want.high], rtol=0, atol=0.05 * (want.high - want.low))
        raise ExerciseFailed(
            f"{what}: expected ({want.low:.6f}, {want.high:.6f}), got ({got[0]:.6f}, {got[1]:.6f}). "
            + ("Close, as another bootstrap would be: draw the indices exactly as the task says "
               "(np.random.default_rng(seed), then one rng.integers(0, n, size=(n_resamples, n))) and "
               "take np.percentile of the row means, so the check can compare exactly." if near else ""))


def _paired_scores(wins: int, losses: int) -> tuple[np.ndarray, np.ndarray]:
    # 0/1 scores of models A and B: B alone right on `wins` items, A alone on `losses`, plus ties.
    a = np.array([0] * wins + [1] * losses + [1] * 5 + [0] * 4, dtype=float)
    b = np.array([1] * wins + [0] * losses + [1] * 5 + [0] * 4, dtype=float)
    return a, b


@exercise(chapter="08_evaluation", solution=mcnemar_p_value,
          task="Exact two-sided McNemar p-value from the number of items model B wins and loses "
               "against model A.")
def check_mcnemar_p_value(answer: Callable) -> None:
    """Compare with `paired_comparison` on 0/1 scores with these wins and losses (and some ties)."""
    for wins, losses in [(7, 2), (10, 10), (0, 6), (3, 12), (25, 14)]:
        want = paired_comparison(*_paired_scores(wins, losses), n_resamples=100).p_value
        n, k = wins + losses, min(wins, losses)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        chi_squared = (wins - losses) ** 2 / n
        hints = {
            "one-sided: double the tail, since B could have been better or worse.": tail,
            "did not cap at 1: when wins == losses the two tails overlap, and a p-value is at most 1.":
                2 * tail,
            "left out k = min(wins, losses) itself: the tail is P(X <= k), inclusive.":
                2 * (tail - math.comb(n, k) / 2**n),
            "used P(X = k) alone; the p-value sums the whole tail P(X <= k).": 2 * math.comb(n, k) / 2**n,
            "used the chi-squared approximation; the task asks for the exact binomial test.":
                math.erfc(math.sqrt(chi_squared / 2)),
        }
        expect_number(answer(wins, losses), want, f"mcnemar_p_value(wins={wins}, losses={losses})",
                      rel=1e-9, hints=hints)


TRAIN_TEXTS = ["Pelmora is a town by the sea.",
               "Quadra Mitamk lives in Pelmora and works as a baker.",
               "The baker sells bread every morning."]
# (test item, n): mixed case and punctuation; an n-gram spanning two training texts; a repeat.
OVERLAP_CASES = [("Where does Quadra Mitamk live? She LIVES in Pelmora, by the sea!", 3),
                 ("A town by the sea: Quadra Mitamk lives there.", 3),
                 ("Bread every morning, bread every morning, and cake.", 3),
                 ("Does the baker in Pelmora sell bread every morning?", 2)]


@exercise(chapter="08_evaluation", solution=ngram_overlap,
          task="The share of a test item's distinct word n-grams (lower-case, punctuation dropped) "
               "that occur in the training texts.")
def check_ngram_overlap(answer: Callable) -> None:
    """Compare with `contamination` on short texts built to expose each common mistake."""
    for test_text, n in OVERLAP_CASES:
        want = float(contamination(TRAIN_TEXTS, [test_text], n=n).overlap[0])
        seen = set().union(*(ngrams(text, n) for text in TRAIN_TEXTS))
        test_ngrams = ngrams(test_text, n)
        tokens = words(test_text)
        with_repeats = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        unnormalised = _split_ngrams(test_text, n)
        seen_unnormalised = set().union(*(_split_ngrams(text, n) for text in TRAIN_TEXTS))
        spanning = ngrams(" ".join(TRAIN_TEXTS), n)
        hints = {
            "did not normalise the words: lower-case them and drop punctuation (split on anything "
            "but letters and digits), so 'LIVES' is 'lives' and 'sea!' is 'sea'.":
                len(unnormalised & seen_unnormalised) / len(unnormalised),
            "joined the training texts before taking n-grams, which invents n-grams spanning two "
            "texts; take each text's n-grams on its own.": len(test_ngrams & spanning) / len(test_ngrams),
            "counted repeated n-grams of the test item more than once; count each distinct n-gram "
            "once (a set).": sum(gram in seen for gram in with_repeats) / len(with_repeats),
            "returned the number of shared n-grams; divide it by the number of the test item's n-grams.":
                len(test_ngrams & seen),
        }
        expect_number(answer(test_text, list(TRAIN_TEXTS), n), want, rel=1e-9, hints=hints,
                      what=f"ngram_overlap(n={n}) of {test_text!r}")


def _split_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    # n-grams of the raw whitespace-separated tokens, as a learner who skips normalising gets.
    tokens = text.split()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("zero_shot_format", chapter="08_evaluation",
        question="Asked in the chat format, the base model answers under 5% of the qa test questions; with "
                 "three solved examples first ('Q: ... A: ...', the few-shot rung) it does better. What "
                 "exact match, in percent, does it reach in the same 'Q: ... A:' format with no solved "
                 "example?",
        form=Number(rel=0.25, low=0, high=100, unit="%"))


def _retrieval_never_falls(finding: dict) -> str | None:
    # The top k + 1 passages hold the top k, so the share whose answer is among them cannot fall.
    depths, shares = finding["passages"], finding["answer_retrieved"]
    if len(depths) != len(shares) or len(set(depths)) != len(depths):
        return None                                  # one_value_per says what is wrong
    pairs = sorted(zip(depths, shares))
    falls = [k for (_, earlier), (k, later) in zip(pairs, pairs[1:]) if later < earlier]
    if not falls:
        return None
    return (f"answer_retrieved falls at passages {falls}, but the top k passages are among "
            "the top k + 1: count the questions whose answer is in any of the k passages BM25 returns")


experiment("rag_passages", chapter="08_evaluation",
           question="How many passages should RAG retrieve? On the newfacts test, put the top k passages "
                    "of the BM25 index before the prompt for three values of k or more, measure the share "
                    "of questions whose answer is in one of the passages and the exact match, and say where "
                    "more passages stop helping and what they cost.",
           fields={"passages": Field(list, item=int, low=1, min_len=3),
                   "answer_retrieved": Field(list, item=float, low=0, high=1, min_len=3),
                   "exact_match": Field(list, item=float, low=0, high=1, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("passages", ["answer_retrieved", "exact_match"], "number of passages",
                                 "numbers of passages"), _retrieval_never_falls))
