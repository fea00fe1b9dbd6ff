import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcourse.batching import causal_lm_loss, pack_examples, pad_batch
from ftcourse.chat import tokenize_chat, tokenize_example
from ftcourse.data import load_task
from ftcourse.sft import Formatting, finetune, tokenize_instructions
from ftcourse.tolerance import assert_close, loss_path, transformer_path
from ftcourse.train import TrainConfig


@pytest.fixture(scope="module")
def rows():
    return [dict(r) for r in load_task("instructions")["train"].select(range(12))]


@pytest.mark.equivalence
def test_labels_and_loss_match_trl_sft_trainer(base, rows, tmp_path):
    import datasets
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = copy.deepcopy(base[0]), base[1]
    dataset = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["instruction"]}],
         "completion": [{"role": "assistant", "content": r["response"]}]} for r in rows])
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), report_to=[],
                     bf16=False, gradient_checkpointing=False, max_length=None,
                     dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    theirs = trainer.train_dataset
    ours = [tokenize_example(tokenizer, r["instruction"], r["response"]) for r in rows]
    assert [ex["input_ids"] for ex in ours] == theirs["input_ids"]
    assert [ex["labels"] for ex in ours] == theirs["labels"]

    trl_batch = trainer.data_collator([theirs[i] for i in range(len(rows))])
    trainer.model.train()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, dict(trl_batch))
        loss_sum, count = causal_lm_loss(trainer.model, pad_batch(ours, tokenizer.pad_token_id))
    n = loss_path(model.config, max(len(ex["input_ids"]) for ex in ours), int(count))
    assert_close(loss_sum / count, trl_loss, n=n, msg="loss")


def test_multi_turn_labels_cover_every_assistant_turn_only(tokenizer):
    chat = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6"}]
    example = tokenize_chat(tokenizer, chat)
    labelled = [t for t in example["labels"] if t != -100]
    eos = tokenizer.eos_token_id
    assert labelled.count(eos) == 2
    assert tokenizer.decode(labelled).replace(" ", "") == "4<eos>6<eos>"


def test_unmasked_and_no_eos_variants(tokenizer):
    full = tokenize_example(tokenizer, "What is 2 + 2?", "4", mask_prompt=False)
    assert full["labels"] == full["input_ids"]
    no_eos = tokenize_example(tokenizer, "What is 2 + 2?", "4", learn_eos=False)
    assert tokenizer.eos_token_id in no_eos["input_ids"]
    assert tokenizer.eos_token_id not in no_eos["labels"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=st.text(min_size=1, max_size=40).filter(str.strip),
       response=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
       .filter(str.strip))
def test_unmasked_labels_decode_to_the_response_and_eos(tokenizer, instruction, response):
    example = tokenize_example(tokenizer, instruction, response)
    labelled = [t for t in example["labels"] if t != -100]
    assert labelled[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labelled[:-1]) == " " + response      # the template's space, then the text


@pytest.mark.equivalence
def test_packing_gives_the_same_per_example_losses_and_no_cross_attention(base, rows):
    model, tokenizer = base
    examples = [tokenize_example(tokenizer, r["instruction"], r["response"]) for r in rows[:6]]
    packed = pack_examples(examples, max_len=128)
    assert len(packed) < len(examples)
    with torch.no_grad():
        unpacked = [causal_lm_loss(model, pad_batch([ex], tokenizer.pad_token_id)) for ex in examples]
        batch = pad_batch(packed, tokenizer.pad_token_id)
        assert "attention_mask" not in batch          # positions alone separate the examples
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                               reduction="none", ignore_index=-100)
    segments = []   # (row, start, end) of every example, found where the positions restart
    for r, row in enumerate(packed):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
        segments += [(r, start, end) for start, end in zip(starts, starts[1:])]
    assert len(segments) == len(examples)
    row_length = batch["input_ids"].shape[1]
    for r, start, end in segments:
        ids = packed[r]["input_ids"][start:end]
        index = next(i for i, ex in enumerate(examples) if ex["input_ids"] == ids)
        n = loss_path(model.config, row_length, end - start)
        assert_close(losses[r, start:end - 1].sum(), unpacked[index][0], n=n, msg=f"example {index}")

    # No token attends across a boundary: changing example 0 leaves example 1's logits unchanged.
    row = packed[0]
    first = row["position_ids"].index(0, 1)
    changed = torch.tensor([row["input_ids"]])
    changed[0, 1:first] = (changed[0, 1:first] + 7) % 1000
    positions = torch.tensor([row["position_ids"]])
    with torch.no_grad():
        a = model(input_ids=torch.tensor([row["input_ids"]]), position_ids=positions, use_cache=False).logits
        b = model(input_ids=changed, position_ids=positions, use_cache=False).logits
    assert_close(a[0, first:], b[0, first:], n=transformer_path(model.config, len(row["input_ids"])))


def test_bad_chats_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="message 1: unknown role 'robot'"):
        tokenize_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match=r"message 1 \(assistant\): content is empty"):
        tokenize_example(tokenizer, "hi", "  ")
    with pytest.raises(ValueError, match="no assistant turn"):
        tokenize_chat(tokenizer, [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match=r"row 1: field 'response' is empty"):
        tokenize_instructions(tokenizer, [{"instruction": "a", "response": "b"},
                                          {"instruction": "c", "response": ""}])


def test_examples_longer_than_the_context_are_counted_and_left_out(tokenizer):
    rows = [{"instruction": "cat " * 300, "response": "dog"}, {"instruction": "hi", "response": "yo"}] * 2
    with pytest.warns(UserWarning, match="Left out 2 of 4 examples longer than 100 tokens"):
        kept = tokenize_instructions(tokenizer, rows, max_len=100)
    assert len(kept) == 2
    with pytest.raises(ValueError, match="longer than max_len=3"):
        pack_examples(kept, max_len=3)


def test_finetune_lowers_the_loss_on_the_responses(base, rows):
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    config = TrainConfig(max_steps=12, batch_size=6, lr=2e-3)
    _, result = finetune(model, tokenizer, rows, "full", config, progress=False)
    assert result.final_loss < 0.5 * result.history[0]["loss"]
    _, packed = finetune(copy.deepcopy(base[0]), tokenizer, rows, "full", config,
                         formatting=Formatting(pack=True), progress=False)
    assert packed.final_loss < 0.5 * packed.history[0]["loss"]


def test_finetune_rejects_an_unknown_method(base, rows):
    with pytest.raises(ValueError, match="Unknown method 'magic'; available methods: full, lora"):
        finetune(base[0], base[1], rows, "magic")


def test_packed_attention_mask_is_block_diagonal_and_causal():
    from ftcourse.batching import packed_attention_mask

    mask = packed_attention_mask([0, 1, 2, 0, 1])
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                             [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
