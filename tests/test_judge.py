"""The pairwise judge's mechanics on planted judges, and Cohen's kappa against scikit-learn."""

import math
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from ftcourse.evaluate.judge import (
    LABELS,
    PairwiseJudgments,
    agreement_with_labels,
    cohen_kappa,
    judge_both_orders,
    judge_margins,
    judge_prompt,
    label_tokens,
)
from ftcourse.tolerance import assert_close, transformer_path

QUESTIONS = ["Where does Ada live?", "What is Bo's job?", "What pet does Cy have?", "Where does Di live?"]
RIGHT = ["Pelmora", "pilot", "rabbit", "Axbury"]
WRONG = ["Mirefield", "baker", "parrot", "Pelmora"]


class PlantedJudge(torch.nn.Module):
    """Logits from a rule on the decoded prompt: +1 on label A's token where `prefers_a(text)`,
    else on B's; the same logits at every position, so only the row's text matters."""

    def __init__(self, tokenizer, prefers_a):
        super().__init__()
        self.tokenizer, self.prefers_a = tokenizer, prefers_a
        self.ids = label_tokens(tokenizer, judge_prompt("q", "a", "b"))[1:]
        self.dummy = torch.nn.Parameter(torch.zeros(1))      # gives the stub a device

    def forward(self, input_ids, attention_mask, **_):
        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            text = self.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            logits[row, :, self.ids[0 if self.prefers_a(text) else 1]] = 1.0
        return type("Out", (), {"logits": logits})()


def shown_answers(text: str) -> tuple[str, str, str | None]:
    """(answer A, answer B, reference or None) as the judging prompt shows them."""
    reference = re.search(r"Reference answer: (.*)\n", text)
    return (re.search(r"Answer A: (.*)\n", text)[1], re.search(r"Answer B: (.*)\n", text)[1],
            reference[1] if reference else None)


def test_a_judge_that_always_says_a_is_fully_position_biased_and_never_consistent(tokenizer):
    judged = judge_both_orders(PlantedJudge(tokenizer, lambda text: True), tokenizer, QUESTIONS, RIGHT, WRONG)
    assert judged.position_bias == 1.0
    assert judged.consistency == 0.0
    assert judged.verdicts.tolist() == ["tie"] * 4
    agreement = agreement_with_labels(judged, [1, 1, 1, 1], [0, 0, 0, 0])
    assert (agreement.picks_right.estimate, agreement.pairs, agreement.ties) == (0.5, 4, 4)


def test_a_judge_that_reads_the_reference_picks_the_right_answer_in_both_orders(tokenizer):
    def matches_reference(text):
        first, _, reference = shown_answers(text)
        return first == reference

    judge = PlantedJudge(tokenizer, matches_reference)
    xs, ys = [RIGHT[0], WRONG[1], RIGHT[2], WRONG[3]], [WRONG[0], RIGHT[1], WRONG[2], RIGHT[3]]
    judged = judge_both_orders(judge, tokenizer, QUESTIONS, xs, ys, references=RIGHT, batch_size=3)
    assert judged.position_bias == 0.5
    assert judged.consistency == 1.0
    assert judged.verdicts.tolist() == ["x", "y", "x", "y"]
    agreement = agreement_with_labels(judged, [1, 0, 1, 0], [0, 1, 0, 1])
    assert (agreement.picks_right.estimate, agreement.ties) == (1.0, 0)
    # The same judge without the reference has nothing to go on: it always says B.
    blind = judge_both_orders(judge, tokenizer, QUESTIONS, xs, ys)
    assert blind.position_bias == 0.0 and blind.consistency == 0.0


def test_agreement_counts_only_pairs_with_exactly_one_right_answer():
    # Pair 0: x right, judge picks x; pair 1: both right (no label); pair 2: y right, judge picks x.
    judged = PairwiseJudgments(np.array([[1.0, -1.0], [1.0, -1.0], [2.0, -0.5]]))
    agreement = agreement_with_labels(judged, [1, 1, 0], [0, 1, 1])
    assert (agreement.picks_right.estimate, agreement.pairs, agreement.ties) == (0.5, 2, 0)


def test_judge_margins_are_the_label_log_probabilities_batched_or_alone(tiny_llama, tokenizer):
    firsts = ["Pelmora", "a pilot who flies planes", "rabbit"]
    margins = judge_margins(tiny_llama, tokenizer, QUESTIONS[:3], firsts, WRONG[:3], batch_size=3)
    alone = judge_margins(tiny_llama, tokenizer, QUESTIONS[:3], firsts, WRONG[:3], batch_size=1)
    a, b = tokenizer.convert_tokens_to_ids(["ĠA", "ĠB"])        # " A", " B": this tokenizer's labels
    for i, margin in enumerate(margins):
        ids = torch.tensor([tokenizer(judge_prompt(QUESTIONS[i], firsts[i], WRONG[i]))["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_llama(ids).logits[0, -1], dim=-1)
        # A difference of two log-probabilities: the path to a logit plus the logsumexp.
        n = transformer_path(tiny_llama.config, ids.shape[1]) + len(tokenizer)
        assert_close(margin, (logprobs[a] - logprobs[b]).item(), n=n, scale=10.0, dtype=torch.float32)
        assert_close(alone[i], margin, n=n, scale=10.0, dtype=torch.float32)


def test_label_tokens_in_chat_and_raw_text_are_the_labels_tokens(tokenizer):
    prompt = judge_prompt("q", "a", "b")
    for chat in (False, True):
        shared, *ids = label_tokens(tokenizer, prompt, chat=chat)
        assert shared == [] and [tokenizer.decode([i]).strip() for i in ids] == list(LABELS)


def test_labels_that_share_tokens_compare_the_one_that_differs(tiny_llama, tokenizer):
    # " the A" and " the B" share " the": the verdict compares " A" and " B" after it.
    labels = ("the A", "the B")
    margin = judge_margins(tiny_llama, tokenizer, QUESTIONS[:1], RIGHT[:1], WRONG[:1], labels=labels)[0]
    prompt = judge_prompt(QUESTIONS[0], RIGHT[0], WRONG[0])
    shared, a, b = label_tokens(tokenizer, prompt, labels)
    assert len(shared) == 1 and tokenizer.decode([a]).strip() == "A"
    ids = torch.tensor([tokenizer(f"{prompt} the")["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_llama(ids).logits[0, -1], dim=-1)
    n = transformer_path(tiny_llama.config, ids.shape[1]) + len(tokenizer)
    assert_close(margin, (logprobs[a] - logprobs[b]).item(), n=n, scale=10.0, dtype=torch.float32)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.equivalence
def test_cohen_kappa_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    categories = ["yes", "no", "tie"][:2 + seed % 2]
    first = rng.choice(categories, size=40 + 10 * seed)
    second = np.where(rng.random(len(first)) < 0.6, first, rng.choice(categories, size=len(first)))
    ours, theirs = cohen_kappa(first.tolist(), second.tolist()), cohen_kappa_score(first, second)
    torch.testing.assert_close(ours, float(theirs), rtol=0, atol=1e-12)   # float64, same formula


def test_cohen_kappa_known_values():
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == 1.0
    assert cohen_kappa(["a", "b"], ["b", "a"]) == -1.0
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))     # chance agreement is 1: undefined


def test_judge_rejects_bad_input(tokenizer):
    judge = PlantedJudge(tokenizer, lambda text: True)
    with pytest.raises(ValueError, match="questions is empty; firsts is empty; seconds is empty"):
        judge_margins(judge, tokenizer, [], [], [])
    with pytest.raises(ValueError, match=r"lengths differ \(questions: 4, xs: 4, ys: 3\)"):
        judge_both_orders(judge, tokenizer, QUESTIONS, RIGHT, WRONG[:3])
    with pytest.raises(ValueError, match="must differ in exactly one token.*'first'.*labels="):
        judge_margins(judge, tokenizer, QUESTIONS, RIGHT, WRONG, labels=("first", "second"))
    with pytest.raises(ValueError, match="must differ in exactly one token"):
        judge_margins(judge, tokenizer, QUESTIONS, RIGHT, WRONG, labels=("A", "A"))
    with pytest.raises(ValueError, match=r"template lacks \['\{second\}'\]"):
        judge_margins(judge, tokenizer, QUESTIONS, RIGHT, WRONG, template="Q: {question} A: {first} B:")
    with pytest.raises(ValueError, match=r"template lacks \['\{reference\}'\]"):
        judge_margins(judge, tokenizer, QUESTIONS, RIGHT, WRONG, RIGHT, template="{question}{first}{second}")
    judged = PairwiseJudgments(np.ones((2, 2)))
    with pytest.raises(ValueError, match="None of the 2 pairs has exactly one right answer"):
        agreement_with_labels(judged, [1, 1], [1, 1])
    with pytest.raises(ValueError, match="0/1 labels"):
        agreement_with_labels(judged, [0.5, 1], [1, 0])
    with pytest.raises(ValueError, match="rater_2 is empty"):
        cohen_kappa(["a"], [])
