import pytest
import torch

from ftcourse.generate import generate, left_pad

PROMPTS = ["Where does Quadra Kapels live?", "What is 3 + 4?",
           "Reverse the order of the words: cat, red, pilot", "Hi"]


def test_left_pad_puts_padding_on_the_left():
    padded = left_pad([[5, 6, 7], [8]], pad_id=0)
    ids, mask = padded["input_ids"], padded["attention_mask"]
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("chat", [True, False])
def test_batched_greedy_equals_one_at_a_time(base, chat):
    model, tokenizer = base
    batched = generate(model, tokenizer, PROMPTS, chat=chat, max_new_tokens=12, batch_size=4)
    single = [generate(model, tokenizer, [p], chat=chat, max_new_tokens=12)[0] for p in PROMPTS]
    assert batched == single
    assert any(batched), "the model produced no text at all"


def test_greedy_matches_a_hand_written_argmax_loop(base):
    model, tokenizer = base
    ids = tokenizer("Quadra Kapels lives in")["input_ids"]
    with torch.no_grad():
        for _ in range(5):
            logits = model(torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
    expected = tokenizer.decode(ids[-5:], skip_special_tokens=True).strip()
    assert generate(model, tokenizer, ["Quadra Kapels lives in"], chat=False, max_new_tokens=5)[0] == expected


def test_sampling_is_reproducible_with_a_seed_and_varies_without(base):
    model, tokenizer = base
    kwargs = {"chat": False, "max_new_tokens": 16, "do_sample": True, "temperature": 1.5}
    first = generate(model, tokenizer, ["The"] * 6, seed=1, **kwargs)
    assert first == generate(model, tokenizer, ["The"] * 6, seed=1, **kwargs)
    assert len(set(first)) > 1                     # rows of one batch draw different samples
    assert first != generate(model, tokenizer, ["The"] * 6, seed=2, **kwargs)


def test_generate_rejects_prompts_longer_than_the_context(base):
    model, tokenizer = base
    long_prompt = "cat " * model.config.max_position_embeddings
    message = r"1 prompt\(s\) \(first: index 1\).*exceed the model's 512 positions"
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, ["Hi", long_prompt], chat=False)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, tokenizer, ["Hi"], max_new_tokens=0)
