"""Property-based tests of the data path: chat formatting, tokenisation, label masking, packing,
padding, and train / validation / test splits.

The embedded tokenizer is byte-level BPE with no normalizer, so every valid UTF-8 string (anything
but lone surrogates, which the tokenizer refuses with a TypeError) decodes back exactly, template
syntax ("{{") included. Text that spells a special token ("<eos>") would become that token, so
tokenize_chat refuses it; the properties compare token ids with the tokenizer's own encoding.
"""

import warnings
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ftcourse.batching import (
    example_spans,
    pack_examples,
    packed_attention_mask,
    pad_batch,
    pad_pairs,
    padding_free_batch,
)
from ftcourse.chat import BOS, EOS, ROLES, prompt_ids, tokenize_chat, tokenize_example, tokenize_pair
from ftcourse.data import TASK_FIELDS, make_world, synthetic_rows
from ftcourse.data.tasks import FRACTIONS, SPLITS, split_keys
from ftcourse.sft import Formatting, tokenize_instructions

# Deterministic in CI: the same examples every run, and no example database on disk.
PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=60)
CHEAP = settings(PROPERTY, max_examples=120)    # pure-Python properties, no tokenizer

# Text that stresses the template: unicode, whitespace and Jinja spellings.
TRICKY = ("{{ content }}", "{%", " ", "  ", "\n", "\r\n", "\t", "é", "漢字", "🙂")
SPECIAL = ("<bos>", "<eos>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
piece = st.one_of(st.text(st.characters(codec="utf-8"), max_size=12), st.sampled_from(TRICKY))
text = st.lists(piece, min_size=1, max_size=5).map("".join).filter(str.strip).filter(
    lambda t: not any(token in t for token in SPECIAL))
# Chats open with a system or user turn (tokenize_chat refuses one that opens with the assistant).
turn = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": text})
opener = st.fixed_dictionaries({"role": st.sampled_from(ROLES[:2]), "content": text})
chat = st.tuples(opener, st.lists(turn, max_size=4)).map(
    lambda turns: [turns[0], *turns[1]] if any(t["role"] == "assistant" for t in turns[1])
    else [turns[0], *turns[1], {"role": "assistant", "content": "ok"}])


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded tokenizer alone (no model weights: these tests only tokenize)."""
    from transformers import AutoTokenizer

    from ftcourse.models import EMBEDDED_MODEL

    tok = AutoTokenizer.from_pretrained(str(EMBEDDED_MODEL))
    assert tok.pad_token_id not in (None, tok.eos_token_id)
    return tok


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` alone, with no BOS: how it tokenizes as running text."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def labelled(labels: list[int]) -> list[int]:
    return [t for t in labels if t != -100]


# ---------------------------------------------------------------- formatting, tokenisation, masking

@PROPERTY
@given(instruction=text, response=text)
def test_tokenize_example_decodes_to_the_rendered_chat(tokenizer, instruction, response):
    example = tokenize_example(tokenizer, instruction, response)
    expected = f"{BOS}<|user|> {instruction}<|end|><|assistant|> {response}{EOS}"
    assert tokenizer.decode(example["input_ids"]) == expected
    assert len(example["labels"]) == len(example["input_ids"])


@PROPERTY
@given(instruction=text, response=text)
def test_tokenize_example_labels_only_the_response_and_eos(tokenizer, instruction, response):
    example = tokenize_example(tokenizer, instruction, response)
    ids, labels, prompt = example["input_ids"], example["labels"], prompt_ids(tokenizer, instruction)
    answer = encode(tokenizer, " " + response) + [tokenizer.eos_token_id]
    assert ids == prompt + answer                       # the prompt is a prefix, then the answer
    assert labels == [-100] * len(prompt) + answer       # prompt fully masked, answer fully labelled
    assert tokenizer.decode(labelled(labels)) == f" {response}{EOS}"


@PROPERTY
@given(chat=chat)
def test_tokenize_chat_is_the_concatenation_of_its_turns(tokenizer, chat):
    """Each turn is role token, " " + content, then <|end|> (EOS for the assistant); only the
    assistant's content and EOS are labels."""
    ids, labels = [tokenizer.bos_token_id], [-100]
    for message in chat:
        role = tokenizer.convert_tokens_to_ids(f"<|{message['role']}|>")
        assistant = message["role"] == "assistant"
        body = encode(tokenizer, " " + message["content"])
        body.append(tokenizer.eos_token_id if assistant else tokenizer.convert_tokens_to_ids("<|end|>"))
        ids += [role, *body]
        labels += [-100, *(body if assistant else [-100] * len(body))]
    example = tokenize_chat(tokenizer, chat)
    assert example["input_ids"] == ids
    assert example["labels"] == labels


@PROPERTY
@given(instruction=text, response=text, mask_prompt=st.booleans())
def test_learn_eos_false_masks_every_eos_label_and_nothing_else(tokenizer, instruction, response,
                                                                 mask_prompt):
    eos = tokenizer.eos_token_id
    learned = tokenize_example(tokenizer, instruction, response, mask_prompt=mask_prompt)
    unlearned = tokenize_example(tokenizer, instruction, response, mask_prompt=mask_prompt,
                                 learn_eos=False)
    assert unlearned["input_ids"] == learned["input_ids"]
    assert eos in unlearned["input_ids"] and eos not in unlearned["labels"]
    assert unlearned["labels"] == [-100 if t == eos else t for t in learned["labels"]]


@PROPERTY
@given(instruction=text, response=text)
def test_mask_prompt_false_labels_every_token_including_the_first(tokenizer, instruction, response):
    # labels[0] stays BOS: harmless, since the loss shifts labels left and never predicts token 0.
    example = tokenize_example(tokenizer, instruction, response, mask_prompt=False)
    assert example["labels"] == example["input_ids"]
    assert example["labels"][0] == tokenizer.bos_token_id
    assert tokenize_example(tokenizer, instruction, response)["labels"][0] == -100


@PROPERTY
@given(instruction=text, blank=st.text(" \t\n\r", max_size=4), blank_turn=st.sampled_from(["user",
                                                                                            "assistant"]))
def test_tokenize_example_rejects_a_blank_turn(tokenizer, instruction, blank, blank_turn):
    args = (blank, instruction) if blank_turn == "user" else (instruction, blank)
    with pytest.raises(ValueError, match="content is empty or missing"):
        tokenize_example(tokenizer, *args)


@PROPERTY
@given(before=text, after=text, special=st.sampled_from(SPECIAL), in_response=st.booleans())
def test_text_that_spells_a_special_token_is_refused(tokenizer, before, after, special, in_response):
    spelled = before + special + after
    args = (before, spelled) if in_response else (spelled, after)
    with pytest.raises(ValueError, match="reads as a special token"):
        tokenize_example(tokenizer, *args)


@PROPERTY
@given(chat=chat)
def test_a_chat_that_opens_with_the_assistant_is_refused(tokenizer, chat):
    with pytest.raises(ValueError, match="opens with an assistant turn"):
        tokenize_chat(tokenizer, [{"role": "assistant", "content": "Hello!"}, *chat])


@PROPERTY
@given(rows=st.lists(st.fixed_dictionaries({"instruction": text, "response": text}), min_size=1,
                     max_size=4),
       mask_prompt=st.booleans(), learn_eos=st.booleans(), max_len=st.none() | st.integers(4, 40))
def test_tokenize_instructions_formats_each_row_and_drops_only_long_ones(tokenizer, rows, mask_prompt,
                                                                          learn_eos, max_len):
    formatting = Formatting(mask_prompt=mask_prompt, learn_eos=learn_eos)
    each = [tokenize_example(tokenizer, r["instruction"], r["response"], mask_prompt=mask_prompt,
                             learn_eos=learn_eos) for r in rows]
    kept = [ex for ex in each if max_len is None or len(ex["input_ids"]) <= max_len]
    if not kept:
        with pytest.raises(ValueError, match="none is left to train on"):
            tokenize_instructions(tokenizer, rows, max_len, formatting)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = tokenize_instructions(tokenizer, rows, max_len, formatting)
    assert ours == kept
    assert len([w for w in caught if "Left out" in str(w.message)]) == (len(kept) < len(each))


@PROPERTY
@given(prompt=text, chosen=text, rejected=text)
def test_tokenize_pair_shares_the_prompt_and_labels_each_answer(tokenizer, prompt, chosen, rejected):
    if chosen.strip() == rejected.strip():
        with pytest.raises(ValueError, match="no preference to learn"):
            tokenize_pair(tokenizer, prompt, chosen, rejected)
        return
    pair = tokenize_pair(tokenizer, prompt, chosen, rejected)
    start = len(prompt_ids(tokenizer, prompt))
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        assert pair[f"{side}_input_ids"][:start] == prompt_ids(tokenizer, prompt)
        assert pair[f"{side}_labels"][start:] == encode(tokenizer, " " + answer) + [tokenizer.eos_token_id]
    batch = pad_pairs([pair], tokenizer.pad_token_id)     # chosen row first, then rejected
    for row, side in enumerate(("chosen", "rejected")):
        n = len(pair[f"{side}_input_ids"])
        assert batch["input_ids"][row, :n].tolist() == pair[f"{side}_input_ids"]


@PROPERTY
@given(rows=st.lists(st.fixed_dictionaries({"instruction": text, "response": text}), min_size=1,
                     max_size=5),
       slack=st.integers(0, 60))
def test_packing_and_padding_keep_every_labelled_token(tokenizer, rows, slack):
    """Masked examples, packed then padded: the batch labels exactly the examples' labelled tokens."""
    examples = tokenize_instructions(tokenizer, rows)
    packed = pack_examples(examples, max(len(ex["input_ids"]) for ex in examples) + slack)
    batch = pad_batch(packed, tokenizer.pad_token_id)
    ours = labelled(batch["labels"].flatten().tolist())
    theirs = [t for ex in examples for t in labelled(ex["labels"])]
    assert Counter(ours) == Counter(theirs)


# ---------------------------------------------------------------- packing, attention, padding

@st.composite
def token_examples(draw, min_size: int = 1, max_size: int = 8):
    """Examples of 1-12 ids with labels that are -100 or the id (as tokenize_chat makes them)."""
    examples = []
    for _ in range(draw(st.integers(min_size, max_size))):
        ids = draw(st.lists(st.integers(0, 1023), min_size=1, max_size=12))
        masked = draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids)))
        examples.append({"input_ids": ids, "labels": [-100 if m else t for t, m in zip(ids, masked)]})
    return examples


@CHEAP
@given(examples=token_examples(), slack=st.integers(0, 30))
def test_pack_examples_keeps_examples_whole_in_order_and_within_max_len(examples, slack):
    max_len = max(len(ex["input_ids"]) for ex in examples) + slack
    rows = pack_examples(examples, max_len)
    segments = []                 # per row: its examples, cut where the positions restart at 0
    for row in rows:
        n = len(row["input_ids"])
        assert 0 < n <= max_len and len(row["labels"]) == len(row["position_ids"]) == n
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [n]
        assert starts[0] == 0
        segments.append([{key: row[key][a:b] for key in row} for a, b in zip(starts, starts[1:])])
    # Walk the examples in order: each is the next unread segment of some row.
    nxt = [0] * len(rows)
    for example in examples:
        n = len(example["input_ids"])
        expected = {"input_ids": example["input_ids"], "labels": [-100] + example["labels"][1:],
                    "position_ids": list(range(n))}
        row = next((r for r in range(len(rows)) if nxt[r] < len(segments[r])
                    and segments[r][nxt[r]] == expected), None)
        assert row is not None, f"example {expected} is not the next segment of any row"
        nxt[row] += 1
    assert nxt == [len(s) for s in segments]    # nothing left over


@CHEAP
@given(examples=token_examples(), slack=st.integers(0, 30))
def test_pack_examples_is_first_fit_no_two_rows_could_merge(examples, slack):
    """A row is opened only when the example fits in no earlier row, so any two rows overflow."""
    max_len = max(len(ex["input_ids"]) for ex in examples) + slack
    lengths = [len(row["input_ids"]) for row in pack_examples(examples, max_len)]
    assert all(lengths[i] + lengths[j] > max_len
               for i in range(len(lengths)) for j in range(i + 1, len(lengths)))


@CHEAP
@given(examples=token_examples(), short=st.integers(1, 11))
def test_pack_examples_rejects_an_example_longer_than_max_len(examples, short):
    longest = max(len(ex["input_ids"]) for ex in examples)
    if short >= longest:
        assert pack_examples(examples, short)
        return
    with pytest.raises(ValueError, match="longer than max_len"):
        pack_examples(examples, short)


@CHEAP
@given(lengths=st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_packed_attention_mask_is_block_diagonal_causal(lengths):
    positions = [p for n in lengths for p in range(n)]
    ours = packed_attention_mask(positions)
    theirs = torch.block_diag(*[torch.ones(n, n, dtype=torch.bool).tril() for n in lengths])
    assert torch.equal(ours, theirs)


@CHEAP
@given(examples=token_examples(), drop_labels=st.lists(st.booleans(), min_size=8, max_size=8),
       pad_id=st.integers(0, 1023))
def test_pad_batch_unpads_to_the_original_rows(examples, drop_labels, pad_id):
    """Cutting each row at its attention-mask length gives back input_ids and labels (or, for a
    row with no labels, input_ids as labels); padding is pad_id and -100 after that."""
    rows = [{"input_ids": ex["input_ids"]} if drop else ex for ex, drop in zip(examples, drop_labels)]
    batch = pad_batch(rows, pad_id)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape == (len(rows), width)
    for i, row in enumerate(rows):
        n = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["labels"][i, :n].tolist() == row.get("labels", row["input_ids"])
        assert batch["input_ids"][i, n:].tolist() == [pad_id] * (width - n)
        assert batch["labels"][i, n:].tolist() == [-100] * (width - n)


@CHEAP
@given(examples=token_examples(max_size=12), slack=st.integers(0, 20), pad_id=st.integers(0, 1023))
def test_pad_batch_keeps_packed_positions_and_adds_no_attention_mask(examples, slack, pad_id):
    packed = pack_examples(examples, max(len(ex["input_ids"]) for ex in examples) + slack)
    batch = pad_batch(packed, pad_id)
    assert "attention_mask" not in batch
    width = batch["input_ids"].shape[1]
    for i, row in enumerate(packed):
        n = len(row["input_ids"])
        for key, pad in (("input_ids", pad_id), ("labels", -100), ("position_ids", 0)):
            assert batch[key][i].tolist() == row[key] + [pad] * (width - n)


# ---------------------------------------------------------------- splits

@CHEAP
@given(keys=st.lists(st.integers() | st.text(max_size=4), unique=True, max_size=60),
       seed=st.integers(-2**63, 2**63))
def test_split_keys_partitions_the_keys_deterministically(keys, seed):
    splits = split_keys(keys, seed)
    assert list(splits) == list(SPLITS)
    assert Counter(k for part in splits.values() for k in part) == Counter(keys)   # disjoint, covering
    n_train, n_val = round(FRACTIONS[0] * len(keys)), round(FRACTIONS[1] * len(keys))
    assert [len(part) for part in splits.values()] == [n_train, n_val, len(keys) - n_train - n_val]
    assert split_keys(list(keys), seed) == splits


@CHEAP
@given(keys=st.lists(st.integers(0, 20), min_size=1, max_size=10), seed=st.integers())
def test_split_keys_rejects_duplicate_keys(keys, seed):
    duplicated = [*keys, keys[0]]
    with pytest.raises(ValueError, match="unique keys"):
        split_keys(duplicated, seed)


KEY_FIELD = {"preferences": "prompt"}    # what a model is asked, per task


@settings(PROPERTY, max_examples=15)
@given(num_people=st.integers(1, 40), num_newcomers=st.integers(0, 12), seed=st.integers(0, 2**32))
def test_synthetic_splits_never_share_a_prompt_for_any_world(num_people, num_newcomers, seed):
    world = make_world(num_people, num_newcomers, seed)
    for task in TASK_FIELDS:
        rows = synthetic_rows(task, world)
        key = KEY_FIELD.get(task, "instruction")
        seen = {split: {row[key] for row in rows[split]} for split in SPLITS}
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1:]:
                assert not seen[a] & seen[b], f"{task}: {sorted(seen[a] & seen[b])[:3]} in {a} and {b}"
        if task == "routing":
            texts = {split: {row["text"] for row in rows[split]} for split in SPLITS}
            assert not texts["train"] & (texts["validation"] | texts["test"])
        assert rows == synthetic_rows(task, make_world(num_people, num_newcomers, seed))  # deterministic


@settings(PROPERTY, max_examples=15)
@given(num_people=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_qa_asks_every_fact_once_and_preferences_follow_its_splits(num_people, seed):
    world = make_world(num_people, 0, seed)
    questions, pairs = synthetic_rows("qa", world), synthetic_rows("preferences", world)
    assert sum(len(questions[split]) for split in SPLITS) == len(world.facts("people"))
    for split in SPLITS:
        assert [q["instruction"] for q in questions[split]] == [p["prompt"] for p in pairs[split]]


@CHEAP
@given(examples=token_examples(min_size=1, max_size=16))
def test_padding_free_batches_learn_the_same_tokens_in_no_more_rows(examples):
    """Every label the padded batch learns (each example's from its second token on: the first
    predicts nothing) is learned once in the padding-free batch, in at most as many rows."""
    free, padded = padding_free_batch(examples, pad_id=0), pad_batch(examples, pad_id=0)
    assert free["input_ids"].shape[0] <= padded["input_ids"].shape[0]
    assert free["input_ids"].shape[1] == padded["input_ids"].shape[1]
    assert Counter(labelled(free["labels"][:, 1:].flatten().tolist())) == \
        Counter(t for ex in examples for t in labelled(ex["labels"][1:]))
    if free["input_ids"].shape[0] == len(examples):    # nothing packed: the padded batch itself
        assert all(torch.equal(free[key], padded[key]) for key in padded)


@CHEAP
@given(examples=token_examples(min_size=1, max_size=16))
def test_example_spans_find_every_example_in_padded_and_packed_rows(examples):
    for batch in (pad_batch(examples, pad_id=-1), padding_free_batch(examples, pad_id=-1)):
        ids = batch["input_ids"].tolist()
        found = sorted(ids[row][start:end] for row, start, end in example_spans(batch, pad_id=-1))
        assert found == sorted(ex["input_ids"] for ex in examples)


def test_example_spans_refuse_a_batch_that_is_neither_padded_nor_packed():
    with pytest.raises(ValueError, match="needs a batch with attention_mask .* or position_ids"):
        example_spans({"input_ids": torch.tensor([[5, 6]]), "labels": torch.tensor([[5, 6]])}, pad_id=0)
