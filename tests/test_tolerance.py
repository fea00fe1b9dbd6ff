"""The tolerance rule itself: its formula, its edges, and its errors."""

import math

import pytest
import torch
from transformers import LlamaConfig

from ftcourse.tolerance import adam_bound, assert_close, bound, loss_path, transformer_path


def test_bound_is_c_eps_sqrt_n_scale():
    assert bound(torch.float32, 100, 2.0) == 4 * torch.finfo(torch.float32).eps * 10 * 2.0
    assert bound(torch.float64, 1, 1.0) == 4 * 2.0 ** -52
    assert bound(torch.bfloat16, 4, 1.0) == 4 * 2.0 ** -7 * 2


def test_assert_close_passes_within_the_bound_and_fails_beyond_it():
    limit = bound(torch.float32, 64, 3.0)
    expected = torch.tensor([3.0, -1.0])
    assert_close(expected + torch.tensor([0.9 * limit, 0.0]), expected, n=64)
    with pytest.raises(AssertionError, match=r"rule: C \* eps\(torch.float32\) \* sqrt\(64\)"):
        assert_close(expected + torch.tensor([0.0, 1.5 * limit]), expected, n=64)


def test_python_numbers_are_compared_in_float64_with_the_given_dtype():
    assert_close(0.1 + 0.2, 0.3, n=2, dtype=torch.float64)
    with pytest.raises(AssertionError):      # 1e-9 is far beyond float64 rounding, within float32's
        assert_close(0.3 + 1e-9, 0.3, n=2, dtype=torch.float64)
    assert_close(0.3 + 1e-9, 0.3, n=2, dtype=torch.float32)


def test_a_derived_limit_replaces_the_rule():
    assert_close(torch.tensor([1.0 + 1e-3]), torch.tensor([1.0]), limit=2e-3)
    with pytest.raises(AssertionError, match="derived bound"):
        assert_close(torch.tensor([1.0 + 1e-3]), torch.tensor([1.0]), limit=5e-4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n >= 1 and scale >= 0, got n=0"):
        bound(torch.float32, 0, 1.0)
    with pytest.raises(TypeError, match="takes n .* or limit, not both or neither"):
        assert_close(torch.ones(1), torch.ones(1))
    with pytest.raises(TypeError, match="takes n .* or limit, not both or neither"):
        assert_close(torch.ones(1), torch.ones(1), n=4, limit=1.0)
    with pytest.raises(TypeError, match="needs the dtype they were computed in"):
        assert_close(1.0, 1.0, n=4)


def test_paths_count_the_sums_behind_a_logit_and_a_loss():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                         vocab_size=300)
    per_layer = 64 + 16 + 2 * 10 + 4 * 16 + 64 + 160    # q/k/v, scores, softmax and values, o, gate/up, down
    assert transformer_path(config, tokens=10) == 3 * per_layer + 64
    assert loss_path(config, tokens=10, count=25) == transformer_path(config, 10) + 300 + 25


def test_adam_bound_is_lr_over_eps_per_step():
    assert math.isclose(adam_bound(1e-12, lr=1e-3, steps=4), 4 * 1e-3 * 1e-12 / 1e-8)
