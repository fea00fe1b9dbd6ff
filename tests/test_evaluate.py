import math

import numpy as np
import pytest
import torch

from ftcourse.evaluate import (
    CI,
    accuracy,
    bootstrap_ci,
    exact_match,
    macro_f1,
    normalize,
    perplexity,
    rouge_l,
)
from ftcourse.tolerance import assert_close, loss_path


def test_exact_match_normalises_case_space_and_punctuation():
    scores = exact_match(["Pelmora.", "pilot", "  a  Cat ", "red"], ["pelmora", "baker", "a cat", "red!"])
    assert scores.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert normalize("  The   Fox! ") == "the fox"
    assert accuracy(["a", "b", "c", "d"], ["a", "b", "x", "y"]) == 0.5


def test_macro_f1_matches_hand_computation():
    # a: tp 1, fp 1, fn 0 -> 2/3; b: tp 2, fp 0, fn 1 -> 4/5; c: tp 1 -> 1.
    predictions = ["a", "a", "b", "b", "c"]
    references = ["a", "b", "b", "b", "c"]
    assert_close(macro_f1(predictions, references), (2 / 3 + 4 / 5 + 1) / 3, n=8, dtype=torch.float64)


def test_macro_f1_counts_an_out_of_label_prediction_as_a_miss():
    # a: tp 1, fn 1 -> 2/3; b: tp 1 -> 1.
    assert_close(macro_f1(["a", "banana", "b"], ["a", "a", "b"], labels=["a", "b"]), 5 / 6, n=6,
                 dtype=torch.float64)


def test_rouge_l_matches_hand_computed_lcs():
    scores = rouge_l(["the cat sat on the mat", "a b c d", "nothing here", "A-B"],
                     ["the cat lay on the mat", "a c e", "something else", "a b"])
    # LCS 5 of 6 and 6 words -> 5/6; LCS 2, lengths 4 and 3 -> 2*2/7; no overlap -> 0; "a b" both.
    assert_close(list(scores), [5 / 6, 4 / 7, 0.0, 1.0], n=4, dtype=torch.float64)


def test_metrics_reject_unpaired_inputs():
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        exact_match(["a", "b"], ["a", "b", "c"])


class UniformLM(torch.nn.Module):
    """Equal logits for every token: perplexity must equal the vocabulary size."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    examples = [{"input_ids": [1, 2, 3, 4]}, {"input_ids": [5, 6], "labels": [-100, 6]}]
    # float32: a logsumexp over 50 logits and a mean over the 4 tokens, then exp (relative error).
    assert_close(perplexity(UniformLM(50), examples, pad_id=0), 50.0, n=50 + 4, dtype=torch.float32,
                 scale=50 * math.log(50))


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    trials, covered = 300, 0
    for trial in range(trials):
        sample = rng.binomial(1, 0.3, size=120)
        covered += not bootstrap_ci(sample, n_resamples=1000, seed=trial).excludes(0.3)
    # Nominal 95%; the percentile bootstrap runs slightly narrow at n = 120.
    assert 0.90 <= covered / trials <= 0.98, covered / trials


def test_bootstrap_ci_of_paired_differences_finds_a_planted_gain_and_no_null_one():
    rng = np.random.default_rng(1)
    before = rng.binomial(1, 0.4, size=150).astype(float)
    improved = np.maximum(before, rng.binomial(1, 0.3, size=150))   # +~0.18 on the same items
    assert bootstrap_ci(improved - before).excludes(0.0)
    shuffled = rng.permutation(before)                               # same rate, no real change
    assert not bootstrap_ci(shuffled - before).excludes(0.0)


def test_bootstrap_ci_with_a_custom_statistic():
    predictions = np.array(["a", "b", "a", "b"] * 10)
    references = np.array(["a", "b", "b", "b"] * 10)
    ci = bootstrap_ci(np.arange(40), statistic=lambda idx: macro_f1(predictions[idx], references[idx]))
    assert ci.estimate == macro_f1(predictions, references)     # the statistic of the same 40 items
    assert ci.low <= ci.estimate <= ci.high


def test_bootstrap_ci_is_reproducible_and_checks_input():
    scores = [0, 1, 1, 0, 1]
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert str(CI(0.5, 0.25, 0.75)) == "0.500 [0.250, 0.750]"
    with pytest.raises(ValueError, match="at least one score"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_ci(scores, confidence=95)


def test_mentions_answer_matches_whole_words_only():
    from ftcourse.evaluate import mentions_answer

    scores = mentions_answer(["Venka lives in Tessaly.", "a copilot", "Pelmora, of course", ""],
                             ["tessaly", "pilot", "Pelmora", "x"])
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------- comparisons and contamination

from ftcourse.evaluate import contamination, ngrams, paired_comparison  # noqa: E402


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    true_mean, trials = 0.3, 300
    covered = 0
    for i in range(trials):
        ci = bootstrap_ci(rng.binomial(1, true_mean, size=80), n_resamples=1000, seed=i)
        covered += ci.low <= true_mean <= ci.high
    # 95% nominal; the percentile bootstrap runs a little narrow at n = 80. With 300 trials the
    # binomial standard error is 1.3 points, so [0.90, 0.99] fails only for a real miscalibration.
    assert 0.90 <= covered / trials <= 0.99


def test_mcnemar_exact_p_value_matches_hand_computation():
    # B right and A wrong on 9 items, the reverse on 1: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 22/1024.
    a = np.array([0] * 9 + [1] + [1] * 20 + [0] * 10, dtype=float)
    b = np.array([1] * 9 + [0] + [1] * 20 + [0] * 10, dtype=float)
    result = paired_comparison(a, b)
    assert result.test == "McNemar (exact)" and (result.b_only, result.a_only) == (9, 1)
    assert_close(result.p_value, 22 / 1024, n=10, dtype=torch.float64)       # a sum of binomial terms
    assert_close(result.difference.estimate, 8 / 40, n=40, dtype=torch.float64)  # a mean over 40 items


def test_paired_test_detects_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, size=200)                       # e.g. ROUGE-L per item
    planted = paired_comparison(a, np.clip(a + rng.normal(0.05, 0.1, 200), 0, 1), seed=0)
    null = paired_comparison(a, np.clip(a + rng.normal(0.0, 0.1, 200), 0, 1), seed=0)
    assert planted.test == "paired bootstrap"
    assert planted.p_value < 0.01 and planted.difference.excludes(0)
    assert null.p_value > 0.05 and not null.difference.excludes(0)
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([1, 0, 1], [1, 0])


def test_contamination_flags_a_planted_leak():
    train = ["Where does Kalo Torsel live? Kalo Torsel lives in Pelmora.", "What is the job of Ann Brim?"]
    test = ["Where does Kalo Torsel live?",                 # verbatim in training: a leak
            "Which city is home to Tam Orvel these days?",  # unseen
            "what is the JOB of ann brim"]                  # the same words, other case and punctuation
    found = contamination(train, test, n=4)
    assert found.flagged == [0, 2] and found.overlap[1] == 0.0
    assert "2 of 3 test items" in str(found)
    assert ngrams("a b c", 2) == {("a", "b"), ("b", "c")} and ngrams("a b", 4) == set()
    long = "one two three four five six seven eight nine ten"
    partly = contamination([long], [long + " eleven", "two three four five six seven eight nine"])
    assert partly.flagged == [0, 1] and partly.overlap[0] == 0.75
    with pytest.raises(ValueError, match="threshold must be in"):
        contamination(train, test, threshold=0)


@pytest.mark.equivalence
def test_perplexity_interval_brackets_the_corpus_perplexity(tiny_llama):
    from ftcourse.evaluate import perplexity_ci

    rng = np.random.default_rng(0)
    examples = [{"input_ids": ids, "labels": ids} for ids in
                (rng.integers(4, 200, size=rng.integers(5, 30)).tolist() for _ in range(40))]
    interval = perplexity_ci(tiny_llama, examples, pad_id=0, batch_size=8)
    corpus = perplexity(tiny_llama, examples, pad_id=0)
    # exp(mean loss) in other batches: the mean's rounding becomes the perplexity's relative error.
    tokens = sum(len(ex["input_ids"]) - 1 for ex in examples)
    assert_close(interval.estimate, corpus, n=loss_path(tiny_llama.config, 30, tokens), dtype=torch.float32,
                 scale=corpus * math.log(corpus))
    assert interval.low < interval.estimate < interval.high
    small = [{"input_ids": [i % 50 for i in ex["input_ids"]], "labels": [i % 50 for i in ex["labels"]]}
             for ex in examples]
    uniform = perplexity_ci(UniformLM(50), small, pad_id=0)
    tokens = sum(len(ex["input_ids"]) - 1 for ex in small)   # logsumexp over 50, a mean over the tokens
    assert_close([uniform.low, uniform.high], [50.0, 50.0], n=50 + tokens, dtype=torch.float32,
                 scale=50 * math.log(50))


def test_macro_f1_gets_an_interval_through_a_statistic():
    predictions, references = ["a", "b", "a", "b"] * 10, ["a", "b", "b", "b"] * 10
    def f1_of(items):
        return macro_f1([predictions[i] for i in items], [references[i] for i in items])

    interval = bootstrap_ci(np.arange(40), seed=0, statistic=f1_of)
    assert interval.estimate == macro_f1(predictions, references)   # the statistic of the same 40 items
    assert interval.low < interval.estimate < interval.high


def test_forgetting_is_the_held_out_log_perplexity_and_the_recall_rate(base):
    import math

    from ftcourse.data import default_world
    from ftcourse.data.world import recall_probes
    from ftcourse.evaluate import forgetting, perplexity, recall_accuracy

    model, tokenizer = base
    held_out = [{"input_ids": tokenizer("Pelmora is a town by the sea.")["input_ids"]}]
    probes = recall_probes(default_world())[:12]
    measures = forgetting(model, tokenizer, held_out, probes)
    assert measures == {"held-out loss": math.log(perplexity(model, held_out)),
                        "fact recall": recall_accuracy(model, tokenizer, probes).mean()}


@pytest.mark.equivalence
@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_statsmodels(seed):
    from statsmodels.stats.multitest import multipletests

    from ftcourse.evaluate import holm

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 6), rng.uniform(0, 0.01, 4), [0.0, 1.0, 0.02, 0.02]])
    rng.shuffle(p)
    # One product of p by a small integer, then maxima and minima: one rounding each.
    assert_close(torch.tensor(holm(p)), torch.tensor(multipletests(p, method="holm")[1]), n=1)
    for alpha in (0.01, 0.05):
        assert ((holm(p) <= alpha) == multipletests(p, alpha=alpha, method="holm")[0]).all()


def test_holm_on_known_values_and_bad_input():
    from ftcourse.evaluate import holm

    # m = 3: the smallest times 3, the next times 2 (but not below the first), the last times 1.
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    with pytest.raises(ValueError, match="p-values in \\[0, 1\\]"):
        holm([0.5, 1.2])
