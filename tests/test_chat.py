import pytest

from ftcourse.chat import messages, prompt_ids, tokenize_example


def test_special_tokens_are_distinct(tokenizer):
    ids = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    assert len(ids) == 3 and None not in ids


def test_labels_are_the_response_and_eos_only(tokenizer):
    example = tokenize_example(tokenizer, "Where does Quadra Kapels live?", "Zellin")
    kept = [t for t in example["labels"] if t != -100]
    assert kept[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(kept, skip_special_tokens=True).strip() == "Zellin"
    assert len(example["labels"]) == len(example["input_ids"])


def test_prompt_is_a_prefix_of_the_full_chat(tokenizer):
    prompt = prompt_ids(tokenizer, "What is 2 + 2?")
    full = tokenize_example(tokenizer, "What is 2 + 2?", "4")["input_ids"]
    assert full[:len(prompt)] == prompt
    assert prompt[0] == tokenizer.bos_token_id and prompt.count(tokenizer.bos_token_id) == 1


def test_response_tokenizes_as_in_running_text(tokenizer):
    # " Zellin" mid-sentence in pretraining must be the same tokens as the start of a response.
    example = tokenize_example(tokenizer, "q", "Zellin")
    response = [t for t in example["labels"] if t != -100][:-1]
    assert response == tokenizer(" Zellin", add_special_tokens=False)["input_ids"]


def test_unknown_role_is_an_error(tokenizer):
    chat = messages("hi", "hello") + [{"role": "robot", "content": "beep"}]
    with pytest.raises(Exception, match="Unknown chat role robot; use system, user or assistant"):
        tokenizer.apply_chat_template(chat)


def test_only_special_tokens_are_refused_in_the_text(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["Pelmora"])                                          # added, not special
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    example = tokenize_example(tok, "Where is Pelmora?", "By the sea.")
    assert tok.decode(example["input_ids"]).count("Pelmora") == 1
    with pytest.raises(ValueError, match=r"message 0 \(user\): the text contains '<\|tool\|>'"):
        tokenize_example(tok, "Call <|tool|> now", "ok")
