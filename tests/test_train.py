import copy
import math
import shutil
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

from ftcourse.batching import causal_lm_loss, pad_batch, padding_free_batch
from ftcourse.checkpoints import latest_checkpoint
from ftcourse.memory import MIN_8BIT_SIZE
from ftcourse.tolerance import adam_bound, assert_close, bound, loss_path, transformer_path
from ftcourse.train import (
    PACKED_ROW_MODEL_TYPES,
    TrainConfig,
    default_collate,
    example_order,
    keeps_packed_rows_apart,
    lr_lambda,
    train,
)


def test_loss_falls(make_model, make_data):
    model, data = make_model(), make_data()
    result = train(model, data, TrainConfig(max_steps=40, batch_size=8, lr=1e-2), progress=False)
    first, last = result.history[0]["loss"], result.final_loss
    assert first > math.log(model.config.vocab_size) - 0.5          # starts near chance
    assert last < 0.5 * first, (first, last)


def test_only_trainable_parameters_change(make_model, make_data):
    model, data = make_model(), make_data()
    for name, p in model.named_parameters():
        p.requires_grad_("mlp" in name)
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    train(model, data, TrainConfig(max_steps=3, batch_size=8), progress=False)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen_before.items())
    assert all(not torch.equal(params[n], p) for n, p in trained_before.items())


def test_resume_from_a_checkpoint_continues_exactly(tmp_path, make_model, make_data):
    config = TrainConfig(max_steps=8, batch_size=4, lr=5e-3, weight_decay=0.1, save_every=4)
    data = make_data()
    uninterrupted = make_model()
    full = train(uninterrupted, data, config, checkpoint_dir=tmp_path, progress=False)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["step-0000004", "step-0000008"]

    # Keep only the step-4 checkpoint: as if the run had been stopped right after writing it.
    shutil.rmtree(tmp_path / "step-0000008")
    resumed_model = make_model(seed=123)          # different weights: the checkpoint must win
    for p in resumed_model.parameters():
        p.requires_grad_(True)
    resumed = train(resumed_model, data, config, checkpoint_dir=tmp_path, resume=True, progress=False)

    assert resumed.history == full.history
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert latest_checkpoint(tmp_path).name == "step-0000008"
    assert not list(tmp_path.glob(".tmp-*"))      # written atomically: no leftovers


def test_resume_with_8bit_adamw_continues_exactly(tmp_path, tiny_llama, make_data):
    # bitsandbytes' state (uint8 moments, block scales, code maps, int steps) goes through
    # optimizer.pt, loaded with weights_only=True, and the run goes on as if never stopped.
    config = TrainConfig(max_steps=6, batch_size=4, lr=5e-3, weight_decay=0.1, save_every=3,
                         optimizer="adamw-8bit")
    data, uninterrupted, resumed_model = make_data(), copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    full = train(uninterrupted, data, config, checkpoint_dir=tmp_path, progress=False)
    shutil.rmtree(tmp_path / "step-0000006")
    resumed = train(resumed_model, data, config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert resumed.history == full.history
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"different TrainConfig.*'optimizer': \('adamw-8bit', 'adamw'\)"):
        train(copy.deepcopy(tiny_llama), data, TrainConfig(**{**asdict(config), "optimizer": "adamw"}),
              checkpoint_dir=tmp_path, resume=True, progress=False)


def test_8bit_adamw_loss_tracks_adamw(tiny_llama, make_data):
    # The rule: with the same data order, the mean loss of the last 10 of 40 steps within 4% of
    # AdamW's (measured here: about 1%). A real change of training is larger, and the same check
    # catches it: AdamW at 0.7x the learning rate ends about 14% higher.
    assert any(p.numel() >= MIN_8BIT_SIZE for p in tiny_llama.parameters()), "no tensor gets 8-bit states"
    data = make_data()

    def last_losses(**changes) -> float:
        config = TrainConfig(**{"max_steps": 40, "batch_size": 8, "lr": 1e-2, **changes})
        history = train(copy.deepcopy(tiny_llama), data, config, progress=False).history
        assert history[-1]["loss"] < 0.2 * history[0]["loss"], "the run did not learn"
        return sum(h["loss"] for h in history[-10:]) / 10

    adamw = last_losses()
    tracks = lambda other: abs(other / adamw - 1) < 0.04
    assert tracks(last_losses(optimizer="adamw-8bit"))
    assert not tracks(last_losses(lr=7e-3))


def test_resume_with_another_config_is_refused(tmp_path, make_model, make_data):
    data = make_data()
    train(make_model(), data, TrainConfig(max_steps=2, batch_size=4), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"different TrainConfig.*'lr': \(0.001, 0.01\)"):
        train(make_model(), data, TrainConfig(max_steps=2, batch_size=4, lr=0.01),
              checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.equivalence
def test_gradient_accumulation_matches_one_big_batch(make_model, make_data):
    # Same examples per step, summed in two micro-batches instead of one: rounding only. AdamW
    # divides by sqrt(v), which turns a rounding in a near-zero gradient entry into a visible step
    # (`adam_bound`), so the runs are in float64, where that stays far below a real step (lr).
    data = make_data()
    one = make_model().double()
    history = train(one, data, TrainConfig(max_steps=3, batch_size=8, lr=1e-2), progress=False).history
    accumulated = make_model().double()
    train(accumulated, data, TrainConfig(max_steps=3, batch_size=4, grad_accum_steps=2, lr=1e-2),
          progress=False)
    config = one.config
    n = loss_path(config, 12, sum(len(ex["input_ids"]) for ex in data[:8])) + transformer_path(config, 12)
    gradient = bound(torch.float64, n, scale=max(h["grad_norm"] for h in history))
    for (name, a), b in zip(one.named_parameters(), accumulated.parameters()):
        assert_close(b, a, limit=adam_bound(gradient, lr=1e-2, steps=3), msg=name)


@pytest.mark.equivalence
def test_loss_is_the_token_mean_over_the_batch(make_model, make_data):
    model, data = make_model(), make_data(4)
    batch = pad_batch(data, pad_id=0)
    loss_sum, count = causal_lm_loss(model, batch)
    theirs = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["labels"]).loss
    assert count == sum(len(ex["input_ids"]) - 1 for ex in data)
    assert_close(loss_sum / count, theirs, n=loss_path(model.config, batch["input_ids"].shape[1], int(count)))


@pytest.mark.equivalence
def test_padding_free_batches_give_the_padded_loss_and_gradients(base):
    # 16 chat examples of mixed lengths: packed into fewer rows, the same loss and gradients as
    # padded rows, and the loss transformers computes on its own padding-free batch (one row).
    from transformers import DataCollatorWithFlattening

    from ftcourse.data import load_task
    from ftcourse.sft import tokenize_instructions

    model, tokenizer = copy.deepcopy(base[0]).train(), base[1]
    rows = load_task("instructions")["train"].shuffle(seed=0).select(range(16))
    examples = tokenize_instructions(tokenizer, rows)
    pad_id = tokenizer.pad_token_id
    padded, free = pad_batch(examples, pad_id), padding_free_batch(examples, pad_id)
    assert free["input_ids"].shape[0] < padded["input_ids"].shape[0]

    def loss_and_gradients(batch):
        model.zero_grad()
        loss_sum, count = causal_lm_loss(model, batch)
        loss_sum.backward()
        return loss_sum, count, [p.grad.clone() for p in model.parameters()]

    (ours, count, grads), (expected, expected_count, expected_grads) = (loss_and_gradients(free),
                                                                        loss_and_gradients(padded))
    length = padded["input_ids"].shape[1]
    n = loss_path(model.config, length, int(count))
    assert count == expected_count
    assert_close(ours, expected, n=n, msg="summed loss")
    gradient_n = n + transformer_path(model.config, length)
    scale = max(g.abs().max().item() for g in expected_grads)
    for (name, _), a, b in zip(model.named_parameters(), grads, expected_grads):
        assert_close(a, b, n=gradient_n, scale=scale, msg=name)

    flat = DataCollatorWithFlattening(return_tensors="pt")(examples)
    with torch.no_grad():
        theirs = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"],
                       labels=flat["labels"], use_cache=False).loss
    n = loss_path(model.config, flat["input_ids"].shape[1], int(count))
    assert_close(ours.detach() / count, theirs, n=n, msg="transformers' DataCollatorWithFlattening")


def tiny_config(model_type: str):
    """A 2-layer random config of `model_type`, 256 tokens, 64 positions, pad id 0."""
    from transformers import AutoConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    sizes = {"gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
             "opt": dict(common, ffn_dim=64, word_embed_proj_dim=32),
             "gpt_neox": dict(common, intermediate_size=64)}
    llama_like = dict(common, intermediate_size=64, num_key_value_heads=2, head_dim=8)
    return AutoConfig.for_model(model_type, vocab_size=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                **sizes.get(model_type, llama_like))


def token_losses(model, batch) -> dict[tuple[int, ...], torch.Tensor]:
    """Each example's next-token losses (every token after its first), keyed by its input ids,
    from a padded batch or from packed rows (an example starts where the positions restart)."""
    from ftcourse.batching import example_spans, model_inputs

    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:],
                                               reduction="none")
    ids = batch["input_ids"].tolist()
    return {tuple(ids[row][start:end]): losses[row, start:end - 1]
            for row, start, end in example_spans(batch, pad_id=0) if end - start > 1}


@pytest.mark.equivalence
@pytest.mark.parametrize("model_type", [*sorted(PACKED_ROW_MODEL_TYPES), "opt"])
def test_each_architecture_packed_for_keeps_packed_rows_apart(model_type):
    # Every token of every example has the same loss packed as padded, where packing is used; OPT
    # is planted as an architecture where it is not (its positions come from the attention mask).
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": (ids := torch.randint(5, 250, (n,), generator=generator).tolist()),
                 "labels": [-100] + ids[1:]} for n in (5, 12, 3, 9, 4, 7, 11, 2)]
    packed = padding_free_batch(examples, pad_id=0)
    assert packed["input_ids"].shape[0] < len(examples)
    expected, ours = token_losses(model, pad_batch(examples, 0)), token_losses(model, packed)
    assert set(ours) == set(expected)
    worst = max((ours[key] - expected[key]).abs().max().item() for key in expected)
    # The rule's path through the widest of these configs (GPT-2's FFN is 4 x 32 wide), one token.
    widest = SimpleNamespace(hidden_size=32, num_attention_heads=4, head_dim=8, intermediate_size=128,
                             num_hidden_layers=2, vocab_size=256)
    scale = max(losses.abs().max().item() for losses in expected.values())
    assert keeps_packed_rows_apart(model) == (worst <= bound(torch.float32, loss_path(widest, 12, 1), scale))
    assert keeps_packed_rows_apart(model) == (model_type != "opt")


def test_train_packs_only_for_the_next_token_loss_of_a_model_that_keeps_rows_apart(make_model, make_data):
    model, data = make_model(), make_data(8)
    assert default_collate(model, causal_lm_loss).func is padding_free_batch
    assert default_collate(model, lambda model, batch: causal_lm_loss(model, batch)).func is pad_batch

    class Wrapped(torch.nn.Module):          # a model of one's own: packing is not assumed to work
        def __init__(self):
            super().__init__()
            self.inner, self.config = model, model.config

        def forward(self, **inputs):
            return self.inner(**inputs)

    assert default_collate(Wrapped(), causal_lm_loss).func is pad_batch
    result = train(model, data, TrainConfig(max_steps=2, batch_size=4), progress=False)
    seen = example_order(len(data), 8, seed=0)
    assert result.tokens == sum(len(data[i]["input_ids"]) for i in seen)    # real tokens, not padding


def test_pad_batch_right_pads_and_masks():
    batch = pad_batch([{"input_ids": [5, 6, 7]}, {"input_ids": [8], "labels": [-100]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_example_order_is_a_fresh_permutation_each_epoch():
    order = example_order(5, 12, seed=0)
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert order == example_order(5, 12, seed=0) and order != example_order(5, 12, seed=1)


def test_schedule_warms_up_then_decays():
    values = [lr_lambda(s, total=10, warmup=2, schedule="cosine") for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(values[1:], values[2:])) and values[-1] < 0.05
    assert_close(lr_lambda(9, total=10, warmup=0, schedule="linear"), 0.1, n=2, dtype=torch.float64)


def test_epochs_become_steps():
    assert TrainConfig(epochs=3, batch_size=4).total_steps(10) == 8
    assert TrainConfig(epochs=1, batch_size=4, grad_accum_steps=2).total_steps(10, num_processes=2) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of max_steps and epochs"),
    ({"max_steps": 1, "epochs": 1}, "exactly one of max_steps and epochs"),
    ({"max_steps": 0}, "max_steps must be >= 1, got 0"),
    ({"max_steps": 1, "lr": 0}, "lr must be > 0"),
    ({"max_steps": 1, "batch_size": 0}, "batch_size must be >= 1"),
    ({"max_steps": 1, "schedule": "step"}, "schedule must be cosine, linear or constant"),
    ({"max_steps": 1, "optimizer": "adam"}, r"optimizer must be one of 'adamw' \(torch.optim.AdamW\), "
                                            r"'adamw-8bit' \(bitsandbytes.optim.AdamW8bit\), got 'adam'"),
])
def test_train_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_train_rejects_frozen_models_empty_data_and_all_masked_labels(make_model, make_data):
    model = make_model()
    with pytest.raises(ValueError, match="no examples"):
        train(model, [], TrainConfig(max_steps=1), progress=False)
    with pytest.raises(ValueError, match="all-masked|every label is -100"):
        train(model, [{"input_ids": [3, 4], "labels": [-100, -100]}], TrainConfig(max_steps=1),
              progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, make_data(), TrainConfig(max_steps=1), progress=False)
