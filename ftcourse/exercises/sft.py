"""Exercises for supervised fine-tuning: mask the prompt, the shifted loss, the packing mask;
predicting the share of tokens the loss falls on; an open experiment on padding against batch size.

The oracles: `ftcourse.chat.tokenize_example` (labels of a real chat, rendered with the tiny
model's chat template), `ftcourse.batching.causal_lm_loss` (the loss of every training run here,
equal to TRL's) and `ftcourse.batching.packed_attention_mask`.
Shapes: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ftcourse.batching import causal_lm_loss, packed_attention_mask
from ftcourse.chat import prompt_ids, tokenize_example
from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close, expect_equal
from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.models import EMBEDDED_MODEL


def mask_prompt_labels(input_ids: list[int], prompt_length: int) -> list[int]:
    """Labels for SFT: -100 on the first `prompt_length` tokens (the prompt), the ids elsewhere.

    Cross-entropy skips the label -100, so the loss falls on the response and its EOS only: the
    model learns to answer, not to predict the question.
    """
    labels = list(input_ids)                            # a copy: the input ids stay as they are
    labels[:prompt_length] = [-100] * prompt_length
    return labels


@cache
def _tokenizer() -> Any:
    """The tiny model's tokenizer (its chat template renders the examples), loaded once."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(EMBEDDED_MODEL))


CHATS = [("Where does Quadra Kapels live?", "Pelmora"),
         ("What is 12 plus 30?", "42"),
         ("Reverse the words: red green blue", "blue green red")]


@exercise(chapter="02_sft_instruction_tuning", solution=mask_prompt_labels,
          task="Given the token ids of prompt + response and the prompt's length, return labels: "
               "-100 for each prompt token, the token id itself for each response token.")
def check_mask_prompt_labels(answer: Callable[[list[int], int], list[int]]) -> None:
    """Compare with `tokenize_example` on chats rendered by the tiny model's template."""
    tokenizer = _tokenizer()
    for instruction, response in CHATS:
        example = tokenize_example(tokenizer, instruction, response)
        input_ids, want = example["input_ids"], example["labels"]
        n = len(prompt_ids(tokenizer, instruction))          # the chat up to "<|assistant|>"
        given = list(input_ids)
        got = answer(given, n)
        what = f"mask_prompt_labels for {instruction!r} -> {response!r} ({n} prompt tokens)"
        if given != input_ids:
            raise ExerciseFailed(f"{what}: your function changed input_ids in place. The model still "
                                 "needs them as inputs: build the labels in a copy (list(input_ids)).")
        if not isinstance(got, list):
            raise ExerciseFailed(f"{what}: return the labels as a list of ints, like input_ids; got "
                                 f"{type(got).__name__}.")
        mistakes = {
            "you masked the response instead of the prompt.": input_ids[:n] + [-100] * (len(input_ids) - n),
            "you masked nothing: prompt tokens need the label -100.": input_ids,
            "ignored labels are -100 (cross-entropy's ignore_index); 0 is a real token id (here <pad>).":
                [0] * n + input_ids[n:],
            "you masked one token too many: the first response token must keep its label.":
                [-100] * (n + 1) + input_ids[n + 1:],
            "you masked one token too few: the last prompt token must be -100 too.":
                [-100] * (n - 1) + input_ids[n - 1:],
        }
        expect_equal(got, want, what, hint=next((m for m, value in mistakes.items() if value == got), ""))


def next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each labelled token, predicted from the positions before it.

    Position t predicts token t + 1, so the logits drop the last position and the labels the
    first. Labels of -100 are skipped; the mean is over every labelled token of the batch.
    """
    logits, labels = logits[:, :-1], labels[:, 1:]           # (B, T-1, V), (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def _loss_cases() -> list[tuple[Tensor, Tensor]]:
    """Random logits and labels whose rows have prompts of different lengths (masked with -100)."""
    generator = torch.Generator().manual_seed(0)
    cases = []
    for B, T, V, prompts in [(3, 9, 11, (2, 5, 3)), (2, 6, 7, (1, 4))]:
        logits = torch.randn(B, T, V, generator=generator, dtype=torch.float64) * 2
        labels = torch.randint(0, V, (B, T), generator=generator)
        for row, prompt_length in enumerate(prompts):
            labels[row, :prompt_length] = -100
        cases.append((logits, labels))
    return cases


def _package_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The mean loss `causal_lm_loss` computes, given logits: it takes a model, so a stand-in
    model returns them."""
    stand_in = lambda **inputs: SimpleNamespace(logits=logits)
    loss_sum, count = causal_lm_loss(stand_in, {"input_ids": labels.clamp(min=0), "labels": labels})
    return loss_sum / count


@exercise(chapter="02_sft_instruction_tuning", solution=next_token_loss,
          task="Given logits (B, T, V) and labels (B, T) with -100 on ignored positions, return the "
               "mean next-token cross-entropy: position t predicts label t + 1.")
def check_next_token_loss(answer: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Compare with `causal_lm_loss` on batches whose rows have prompts of different lengths."""
    for logits, labels in _loss_cases():
        want = _package_loss(logits, labels)
        shifted_logits, shifted = logits[:, :-1], labels[:, 1:]
        per_token = F.cross_entropy(shifted_logits.transpose(1, 2), shifted, ignore_index=-100,
                                    reduction="none")                      # (B, T-1), 0 where ignored
        labelled = (shifted != -100).sum(1)
        got = answer(logits.clone(), labels.clone())
        # causal_lm_loss computes in float32 (as training does), hence the tolerance.
        expect_close(got, want, f"next_token_loss on logits of shape {tuple(logits.shape)}", atol=1e-5,
                     hints={
            "you forgot to shift: position t predicts the label at t + 1 (logits[:, :-1] against "
            "labels[:, 1:]).": F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100),
            "you shifted the wrong way: logits[:, :-1] go with labels[:, 1:].":
                F.cross_entropy(logits[:, 1:].transpose(1, 2), labels[:, :-1], ignore_index=-100),
            "you averaged over every position: divide by the number of labelled tokens only.":
                per_token.sum() / shifted.numel(),
            "you averaged each row, then the rows: average over all labelled tokens of the batch "
            "at once, so every token counts the same.": (per_token.sum(1) / labelled).mean(),
            "you summed the token losses: take their mean.": per_token.sum()})


def block_causal_mask(position_ids: list[int]) -> Tensor:
    """(T, T) booleans for a packed row: token i may attend to token j when j <= i and both
    belong to the same example. Each example starts where its position is 0 again.

    Packed examples then cannot see each other, so each is trained as if it were alone.
    """
    positions = torch.tensor(position_ids)
    example = torch.cumsum(positions == 0, dim=0)              # 1, 1, 1, 2, 2, ...: which example
    same_example = example[:, None] == example[None, :]       # (T, T)
    causal = torch.ones(len(position_ids), len(position_ids), dtype=torch.bool).tril()
    return same_example & causal


@exercise(chapter="02_sft_instruction_tuning", solution=block_causal_mask,
          task="Given the position ids of a packed row (restarting at 0 for each example), return a "
               "(T, T) boolean mask: True where token i may attend to token j (j <= i, same example).")
def check_block_causal_mask(answer: Callable[[list[int]], Tensor]) -> None:
    """Compare with `packed_attention_mask` on packed rows, one with a one-token example."""
    for position_ids in ([0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 0, 1, 2, 0, 1], [0, 1, 2, 3]):
        T = len(position_ids)
        want = packed_attention_mask(position_ids)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        block = want | want.T                                    # same example, either direction
        got = answer(list(position_ids))
        if isinstance(got, Tensor) and got.dtype != torch.bool:
            raise ExerciseFailed(f"block_causal_mask({position_ids}): return booleans (True = may "
                                 f"attend), got dtype {got.dtype}.")
        # Compared as integers: expect_close subtracts, which booleans do not support.
        expect_close(got, want.int(), f"block_causal_mask({position_ids})", atol=0, hints={
            "packed examples can see each other: allow only tokens of the same example.": causal.int(),
            "inside an example a token must not see later tokens: combine the block mask with a "
            "causal one (j <= i).": block.int(),
            "your mask is transposed: row i says what token i may attend to, so keep j <= i "
            "(the lower triangle).": want.T.int()})


# ---------------------------------------------------------------- predict, then run; an open experiment

predict("loss_token_share", chapter="02_sft_instruction_tuning",
        question="Over the whole instruction training set (questions, arithmetic, reversals, descriptions), "
                 "what percentage of the tokens the model reads carry a label, so that the loss falls on "
                 "them (the responses and their EOS)?",
        form=Number(rel=0.25, low=0, high=100, unit="%"))


def _no_padding_alone(finding: dict) -> str | None:
    # A batch of one example is padded to its own length: nothing to pad.
    sizes, shares = finding["batch_sizes"], finding["padding_percent"]
    if 1 not in sizes or len(sizes) != len(shares) or abs(shares[sizes.index(1)]) < 1e-9:
        return None
    return (f"padding_percent for batch size 1 is {shares[sizes.index(1)]}, but a batch of one example has "
            "no padding: check what you measured")


experiment("padding_waste", chapter="02_sft_instruction_tuning",
           question="How much of a padded batch is padding, and how does it grow with the batch size? Pad "
                    "the tokenized training examples in batches of three sizes or more (in data order, each "
                    "batch to its longest example, as pad_batch does), measure the percentage of positions "
                    "that are padding, and say what it costs a training step and what packing or sorting "
                    "the examples by length would change.",
           fields={"batch_sizes": Field(list, item=int, low=1, min_len=3),
                   "padding_percent": Field(list, item=float, low=0, high=100, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("batch_sizes", ["padding_percent"], "batch size", "batch sizes"),
                   _no_padding_alone))
