"""Every entry point that runs a model over data moves its batches to the model's device.

A GPU is not needed to check it: a model on torch's "meta" device is a model on another device.
`OnAnotherDevice` wraps one and refuses any input that is not on it, as CUDA would ("Expected all
tensors to be on the same device"), and counts the forward passes whose inputs were moved. A meta
model computes shapes only, so an entry point may fail after its forward pass when it reads a
number; what matters here is that the forward pass ran on moved inputs, and that none was refused.
"""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ftcourse.batching import pad_batch
from ftcourse.dpo import preference_accuracy
from ftcourse.evaluate import perplexity
from ftcourse.generate import generate
from ftcourse.reward import RewardModel, reward_margins, score_sequences
from ftcourse.rl import GRPO, exact_answer_reward, rollout


class WrongDevice(RuntimeError):
    """An input reached the model on another device than the model's."""


class OnAnotherDevice(nn.Module):
    """`model` (on the meta device), refusing inputs that are not on its device."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner, self.config, self.moved_calls = model, model.config, 0

    def forward(self, *args, **kwargs):
        device = next(self.inner.parameters()).device
        for value in [*args, *kwargs.values()]:
            if isinstance(value, torch.Tensor) and value.device != device:
                raise WrongDevice(f"input on {value.device}, model on {device}")
        self.moved_calls += 1
        return self.inner(*args, **kwargs)


def meta_llama(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def run_on_another_device(entry_point, model: OnAnotherDevice) -> None:
    """Run `entry_point(model)`; it must reach the model's forward with moved inputs and never with
    unmoved ones (a meta tensor may fail it afterwards, when a number is read)."""
    try:
        entry_point(model)
    except WrongDevice:
        raise
    except (RuntimeError, NotImplementedError, ValueError) as err:   # reading a meta tensor's data
        assert "meta" in str(err).lower() or "Cannot copy out" in str(err), err
    assert model.moved_calls > 0, "the entry point never ran the model"


PAIRS = [{"prompt": "Where does Kalo live?", "chosen": "In Pelmora.", "rejected": "In Zellin."}] * 3


@pytest.mark.parametrize("entry", ["perplexity", "preference_accuracy", "generate", "rollout"])
def test_language_model_entry_points_move_batches_to_the_model(tokenizer, entry):
    model = OnAnotherDevice(meta_llama(tokenizer))
    examples = [{"input_ids": [1, 40, 41, 42], "labels": [1, 40, 41, 42]}] * 3
    calls = {
        "perplexity": lambda m: perplexity(m, examples, batch_size=2),
        "preference_accuracy": lambda m: preference_accuracy(m, tokenizer, PAIRS, batch_size=2),
        "generate": lambda m: generate(m, tokenizer, ["Where does Kalo live?"], max_new_tokens=2),
        "rollout": lambda m: rollout(m, tokenizer, [{"instruction": "2 plus 2?", "response": "4"}],
                                     exact_answer_reward, GRPO(group_size=2, max_new_tokens=2), seed=0),
    }
    run_on_another_device(calls[entry], model)


@pytest.mark.parametrize("entry", ["reward_margins", "score_sequences"])
def test_reward_model_entry_points_move_batches_to_the_model(tokenizer, entry):
    lm = meta_llama(tokenizer)
    model = OnAnotherDevice(RewardModel(lm.model, lm.config))
    calls = {"reward_margins": lambda m: reward_margins(m, tokenizer, PAIRS, batch_size=2),
             "score_sequences": lambda m: score_sequences(m, [[1, 40, 41], [1, 42]], tokenizer.pad_token_id)}
    run_on_another_device(calls[entry], model)


def test_a_loop_that_forgets_to_move_its_batch_is_caught(tokenizer):
    def planted_perplexity(model, examples):     # pads on the CPU and hands the batch over as it is
        batch = pad_batch(examples, 0)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    with pytest.raises(WrongDevice, match="input on cpu, model on meta"):
        run_on_another_device(lambda m: planted_perplexity(m, [{"input_ids": [1, 40, 41]}]),
                              OnAnotherDevice(meta_llama(tokenizer)))
