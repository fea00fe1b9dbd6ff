"""Bottleneck adapters and IA3 from scratch; IA3 against peft."""

import copy

import peft
import pytest
import torch

from ftcourse.adapters import IA3, AdapterLinear, BottleneckAdapter, IA3Linear, from_peft_state, to_peft_state
from ftcourse.methods import count_trainable
from ftcourse.tolerance import assert_close, transformer_path


@pytest.mark.equivalence
def test_ia3_logits_equal_peft(base):
    model, _ = base
    ours = IA3().apply(copy.deepcopy(model))
    generator = torch.Generator().manual_seed(0)
    for layer in ours.modules():
        if isinstance(layer, IA3Linear):    # ones would make any IA3 pass
            layer.ia3_l.data = 1 + 0.3 * torch.randn(layer.ia3_l.shape, generator=generator)
    theirs = peft.get_peft_model(copy.deepcopy(model), IA3().to_peft())
    theirs.load_state_dict(to_peft_state(ours), strict=True)
    ids = torch.randint(4, 1000, (2, 10), generator=generator)
    with torch.no_grad():
        assert_close(ours(ids).logits, theirs(input_ids=ids).logits, n=transformer_path(model.config, 10))
    trainable_in_peft = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert count_trainable(ours)["trainable"] == trainable_in_peft
    again = IA3().apply(copy.deepcopy(model))                  # all ones, then peft's vectors back
    again.load_state_dict(from_peft_state(theirs.state_dict()), strict=True)
    assert all(torch.equal(again.state_dict()[key], tensor) for key, tensor in ours.state_dict().items())


def test_bottleneck_adapter_starts_as_identity_and_counts_as_houlsby(base):
    model, _ = base
    config = BottleneckAdapter(reduction_factor=16)
    adapted = config.apply(copy.deepcopy(model))
    ids = torch.randint(4, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(adapted(ids).logits, model(ids).logits)
    d, r, layers = model.config.hidden_size, model.config.hidden_size // 16, model.config.num_hidden_layers
    # Two adapters per layer, each 2 d r weights + r + d biases (the LoRA paper's |Theta| formula).
    assert count_trainable(adapted)["trainable"] == layers * 2 * (2 * d * r + r + d)
    assert sum(isinstance(m, AdapterLinear) for m in adapted.modules()) == 2 * layers


def test_bottleneck_adapter_learns(base, train_steps):
    losses = train_steps(BottleneckAdapter().apply(copy.deepcopy(base[0])))
    assert losses[-1] < losses[0]


def test_bad_config_is_named(base):
    with pytest.raises(ValueError, match="reduction_factor must be a positive int"):
        BottleneckAdapter(reduction_factor=0)
    with pytest.raises(ValueError, match="feedforward names"):
        IA3(targets=("k_proj",), feedforward=("down_proj",))
    with pytest.raises(ValueError, match="match no Linear"):
        IA3(targets=("kproj",), feedforward=()).apply(copy.deepcopy(base[0]))
