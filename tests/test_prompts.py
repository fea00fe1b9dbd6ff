"""Prompt tuning and prefix tuning from scratch, against peft."""

import copy

import peft
import pytest
import torch

from ftcourse.chat import prompt_ids
from ftcourse.generate import generate, generate_ids
from ftcourse.prompts import PrefixTuning, PromptTuning, from_peft_state, save_soft_prompt, to_peft_state
from ftcourse.tolerance import assert_close, transformer_path


def with_peft_weights(ours, config, base):
    """peft's model for `config`, given our soft prompt's weights (all of them, strictly)."""
    theirs = peft.get_peft_model(copy.deepcopy(base), config.to_peft())
    theirs.load_state_dict(to_peft_state(ours), strict=True)
    return theirs


CONFIGS = [PromptTuning(num_virtual_tokens=6), PrefixTuning(num_virtual_tokens=6),
           PrefixTuning(num_virtual_tokens=6, projection_dim=32)]


@pytest.mark.equivalence
@pytest.mark.parametrize("config", CONFIGS, ids=["prompt", "prefix", "prefix-mlp"])
def test_logits_equal_peft(base, config):
    model, _ = base
    torch.manual_seed(0)
    ours = config.apply(copy.deepcopy(model))
    theirs = with_peft_weights(ours, config, model)
    ids = torch.randint(4, 1000, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0                                   # a right-padded row, as in training batches
    with torch.no_grad():
        logits = ours(ids, mask).logits
        reference = theirs(input_ids=ids, attention_mask=mask).logits
    reference = reference[:, -ids.shape[1]:]          # peft also returns the virtual positions
    real = mask.bool()                                # padding's logits are meaningless in both
    # The virtual tokens lengthen the path; the prefix MLP (computed per batch row in peft, once in
    # ours) adds its two matmuls before the first layer.
    n = transformer_path(model.config, ids.shape[1] + config.num_virtual_tokens) + model.config.hidden_size \
        + (getattr(config, "projection_dim", None) or 0)
    assert_close(logits[real], reference[real], n=n)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in ours.named_parameters() if not n.startswith("base_model.")]
    torch.manual_seed(4)                               # other random rows, then peft's weights back
    again = config.apply(copy.deepcopy(model))
    again.load_state_dict(from_peft_state(theirs.state_dict()), strict=True)
    assert all(torch.equal(again.state_dict()[key], tensor) for key, tensor in ours.state_dict().items())


@pytest.mark.equivalence
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["prompt", "prefix"])
def test_greedy_generation_is_greedy_decoding_of_peft_forward(base, config):
    """Each generated token is the argmax of peft's logits for the text so far.

    Ours decodes against a KV cache, one token at a time; peft's forward pass reads the whole text
    at once, so the two agree only if the cache, its mask and its positions are right, in a batch
    whose prompts differ in length (left padding) and over many tokens. (Not compared with peft's
    own `generate`: with transformers 5 its cached decoding for prompt tuning drifts from its own
    forward pass after a few tokens, which this test would catch in ours.)
    """
    model, tokenizer = base
    torch.manual_seed(1)
    ours = config.apply(copy.deepcopy(model))
    theirs = with_peft_weights(ours, config, model)
    prompts = [prompt_ids(tokenizer, p) for p in ["Where does Quadra Mitamk live?", "What is 7 plus 5?",
                                                  "Describe Quadra Mitamk in one sentence, please."]]
    for prompt, new in zip(prompts, generate_ids(ours, tokenizer, prompts, max_new_tokens=32)):
        assert len(new) > 8
        text = torch.tensor([prompt + new])
        with torch.no_grad():
            greedy = theirs(input_ids=text).logits[0, -len(new) - 1:-1].argmax(dim=-1)
        assert greedy.tolist() == new


def test_batched_generation_equals_one_at_a_time(base):
    model, tokenizer = base
    ours = PromptTuning(num_virtual_tokens=4).apply(copy.deepcopy(model))
    prompts = ["Where does Quadra Mitamk live?", "What is 7 plus 5?"]
    assert generate(ours, tokenizer, prompts, max_new_tokens=6) == \
        [generate(ours, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]


@pytest.mark.equivalence
@pytest.mark.parametrize("config", CONFIGS, ids=["prompt", "prefix", "prefix-mlp"])
def test_saved_soft_prompt_loads_in_peft(base, config, tmp_path):
    model, _ = base
    torch.manual_seed(2)
    ours = config.apply(copy.deepcopy(model))
    save_soft_prompt(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path)
    ids = torch.randint(4, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    n = transformer_path(model.config, 9 + config.num_virtual_tokens) + model.config.hidden_size \
        + (getattr(config, "projection_dim", None) or 0)
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(input_ids=ids).logits[:, -9:], n=n)


def test_text_init_tiles_the_text_like_peft(base):
    model, tokenizer = base
    config = PromptTuning(num_virtual_tokens=30, init_text="Answer briefly")
    ours = config.apply(copy.deepcopy(model))
    theirs = peft.get_peft_model(copy.deepcopy(model), config.to_peft(model.config._name_or_path))
    their_rows = from_peft_state(theirs.state_dict())["prompt_embeddings.weight"]
    assert torch.equal(ours.prompt_embeddings.weight, their_rows)
    ids = tokenizer("Answer briefly")["input_ids"]
    assert torch.equal(ours.prompt_embeddings.weight[len(ids)], model.get_input_embeddings().weight[ids[0]])


@pytest.mark.equivalence
def test_prefix_text_init_is_the_text_itself(base):
    """Initialised from a text, the prefix makes the model behave as if the text came first."""
    model, tokenizer = base
    text = "Hello there friend"
    ours = PrefixTuning(num_virtual_tokens=len(tokenizer(text)["input_ids"]), init_text=text).apply(
        copy.deepcopy(model))
    ids = torch.randint(4, 1000, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        as_text = model(torch.cat([torch.tensor([tokenizer(text)["input_ids"]]), ids], dim=1)).logits[:, -5:]
        tokens = len(tokenizer(text)["input_ids"]) + ids.shape[1]
        assert_close(ours(ids).logits, as_text, n=transformer_path(model.config, tokens))


def test_text_longer_than_the_prompt_is_cut_with_a_warning(base):
    model, _ = base
    with pytest.warns(UserWarning, match="using its first 2"):
        ours = PromptTuning(num_virtual_tokens=2, init_text="a much longer text than two tokens").apply(
            copy.deepcopy(model))
    assert ours.prompt_embeddings.weight.shape[0] == 2


def test_bad_input_is_named(base):
    model, tokenizer = base
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive int"):
        PromptTuning(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="num_virtual_tokens must be a positive int"):
        PrefixTuning(num_virtual_tokens=-3)
    with pytest.raises(ValueError, match="it needs projection_dim=None"):
        PrefixTuning(init_text="hello", projection_dim=16)
    with pytest.raises(ValueError, match="do not fit the model's 512 positions"):
        PrefixTuning(num_virtual_tokens=600).apply(copy.deepcopy(model))
    ours = PrefixTuning(num_virtual_tokens=500).apply(copy.deepcopy(model))
    with pytest.raises(ValueError, match="exceed the model's 512 positions"):
        generate(ours, tokenizer, ["Where does Quadra Mitamk live?"], max_new_tokens=8)


def test_prefix_tuning_refuses_gradient_checkpointing(tiny_llama):
    model = PrefixTuning(num_virtual_tokens=4).apply(tiny_llama)
    model.base_model.activation_checkpointing_enable()
    model.train()
    with pytest.raises(ValueError, match="Prefix tuning cannot train with gradient checkpointing"):
        model(torch.tensor([[5, 6, 7]]))
