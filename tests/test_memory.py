import pytest
import torch

from ftcourse.memory import (
    Setup,
    measure_optimizer_state,
    measure_peak,
    measure_training_step,
    optimizer_bytes,
    optimizer_state_bytes,
    stored_bytes,
)
from ftcourse.memory.measure import timeline_peak, training_step
from ftcourse.train import TrainConfig, make_optimizer


def test_the_step_holds_exactly_its_weights_optimizer_state_and_batch_before_it_allocates():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    batch = {"x": torch.randn(32, 256)}
    loss = lambda m, b: (m(b["x"]).pow(2).sum(), torch.tensor(1.0))
    before = [p.clone() for p in model.parameters()]
    peak = measure_training_step(model, batch, loss_fn=loss)
    adam = optimizer_state_bytes([p.numel() for p in model.parameters()], Setup())  # 2 moments + steps
    assert peak["held_before"] == stored_bytes(model) + adam + batch["x"].nbytes
    assert peak["total"] == peak["held_before"] + peak["allocated"]
    assert peak["allocated"] >= stored_bytes(model)                 # at least the gradients
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "measuring must not train"


@pytest.mark.parametrize("missing", ["profile_memory", "record_shapes"])
def test_timeline_peak_refuses_a_profile_that_cannot_give_it(missing):
    from torch.profiler import profile

    with profile(**{"profile_memory": True, "record_shapes": True, missing: False}) as profiled:
        torch.ones(1000).sum()
    with pytest.raises(ValueError, match="profile_memory=True, record_shapes=True"):
        timeline_peak(profiled, torch.device("cpu"))


def test_measure_peak_sees_a_temporary_allocation():
    small = measure_peak(lambda: torch.ones(10).sum())
    large = measure_peak(lambda: torch.ones(1_000_000).sum())
    assert large["total"] - small["total"] >= 4_000_000 - 100   # a million float32 ones


# ---------------------------------------------------------------- the memory model

import copy  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from ftcourse.lora import LoRA  # noqa: E402
from ftcourse.memory import (  # noqa: E402
    GB,
    MemoryWarning,
    WontFit,
    estimate,
    footprint_of_config,
    footprint_of_model,
    model_state_bytes,
    preflight,
    suggestions,
)
from ftcourse.methods import get_method  # noqa: E402
from ftcourse.prompts import PrefixTuning, PromptTuning  # noqa: E402
from ftcourse.qlora import QLoRA  # noqa: E402

METHODS = {"full": "full", "lora all-linear": LoRA(r=8, targets="all-linear"), "lora q,v": LoRA(r=16),
           "qlora": QLoRA(), "prompt tuning": PromptTuning(num_virtual_tokens=16),
           "prefix tuning": PrefixTuning(num_virtual_tokens=16)}
# A second shape: untied head, more layers, wider, another vocabulary and GQA ratio.
OTHER = dict(vocab_size=512, hidden_size=192, intermediate_size=512, num_hidden_layers=6,
             num_attention_heads=6, num_key_value_heads=3, head_dim=32, max_position_embeddings=256,
             tie_word_embeddings=False, pad_token_id=0)


def make_model(which, base, method):
    torch.manual_seed(0)
    if which == "embedded":
        from ftcourse.models import load_base
        model = load_base()[0]
    else:
        model = LlamaForCausalLM(LlamaConfig(**OTHER))
    return get_method(method).apply(model)


def padded_batch(batch_size, length, seed=0):
    ids = torch.randint(3, 500, (batch_size, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def torch_timeline(profile) -> list[int]:
    """Torch's own memory timeline of `profile` on the CPU: the total bytes at each moment."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)     # deprecated for CUDA memory snapshots
        path = Path(folder) / "timeline.json"
        profile.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return [sum(row) for row in sizes]


# Weights and Adam's states; 8-bit states and their shared maps; 4-bit weights with recomputation;
# a prefix of past keys and values; an untied model with recomputation.
@pytest.mark.equivalence
@pytest.mark.parametrize("which, name, checkpointing, optimizer", [
    ("embedded", "full", False, "adamw"), ("embedded", "prefix tuning", False, "adamw-8bit"),
    ("embedded", "qlora", True, "adamw-8bit"), ("other", "lora q,v", True, "adamw")])
def test_timeline_peak_equals_torchs_memory_timeline(which, name, checkpointing, optimizer, base):
    from torch.profiler import ProfilerActivity, profile

    model = make_model(which, base, METHODS[name])
    if checkpointing:
        getattr(model, "base_model", model).activation_checkpointing_enable()
    step = training_step(model, padded_batch(8, 64),
                         make_optimizer(model, TrainConfig(max_steps=1, optimizer=optimizer)))
    step()                                        # the optimizer's states exist before the profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as profiled:   # what torch's analysis needs
        step()
    ours = timeline_peak(profiled, torch.device("cpu"))
    theirs = torch_timeline(profiled)
    assert ours["held_before"] == theirs[0]       # the timeline's first moment: what was there
    assert ours["total"] == max(theirs)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-8bit"])
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("which", ["embedded", "other"])
def test_model_states_equal_the_bytes_of_the_instantiated_model(which, name, optimizer, base):
    method = METHODS[name]
    model = make_model(which, base, method)
    setup = Setup(method=method, optimizer=optimizer)
    predicted = estimate(model.config, setup)
    assert footprint_of_config(model.config, setup) == footprint_of_model(model)
    assert predicted.weights == stored_bytes(model)
    # Gradients and the optimizer's states after a real step: torch's AdamW (two moments and a
    # step counter per tensor) or bitsandbytes' AdamW8bit (see the next test).
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, TrainConfig(max_steps=1, optimizer=optimizer))
    batch = padded_batch(2, 8)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.pow(2).mean().backward()
    optimizer.step()
    assert predicted.gradients == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    assert predicted.optimizer == optimizer_bytes(optimizer)


def test_8bit_adamw_state_bytes_follow_bitsandbytes_rules():
    # Under 4,096 elements: two float32 moments. From 4,096: two uint8 moments and a float32
    # absmax per started block of 256. Once per optimizer: two 256-entry float32 code maps.
    import bitsandbytes as bnb

    sizes = [4095, 4096, 4097]
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    optimizer = bnb.optim.AdamW8bit(params)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert [optimizer.state[p]["state1"].dtype for p in params] == [torch.float32, torch.uint8, torch.uint8]
    expected = 2 * 4 * 4095 + 2 * (4096 + 4 * 16) + 2 * (4097 + 4 * 17) + 2 * 256 * 4
    assert optimizer_state_bytes(sizes, Setup(optimizer="adamw-8bit")) == expected
    assert optimizer_bytes(optimizer) == expected
    # A model the measured bytes (exact, per tensor) and the per-parameter rate of OPTIMIZERS meet:
    # large tensors, a multiple of 256 each, where only the shared maps differ.
    large = [64 * 4096, 256 * 256]
    rate = model_state_bytes(sum(large), 0, Setup(optimizer="adamw-8bit"))["optimizer"]
    assert optimizer_state_bytes(large, Setup(optimizer="adamw-8bit")) == rate + 2 * 256 * 4


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-8bit"])
def test_measure_optimizer_state_takes_one_step_and_does_not_train(optimizer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    loss = lambda m, b: (m(b["x"]).pow(2).sum(), torch.tensor(1.0))
    before = [p.clone() for p in model.parameters()]
    held = measure_optimizer_state(model, {"x": torch.randn(8, 256)},
                                   TrainConfig(max_steps=1, optimizer=optimizer), loss_fn=loss)
    sizes = [p.numel() for p in model.parameters()]     # two weights in 8 bits, two biases in fp32
    assert held == optimizer_state_bytes(sizes, Setup(optimizer=optimizer))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "measuring must not train"


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("which", ["embedded", "other"])
def test_predicted_peak_is_within_15_percent_of_the_measured_peak(which, name, checkpointing, base):
    method = METHODS[name]
    if checkpointing and name == "prefix tuning":
        pytest.skip("prefix tuning cannot use gradient checkpointing (tested below)")
    model = make_model(which, base, method)
    if checkpointing:
        getattr(model, "base_model", model).activation_checkpointing_enable()
    setup = Setup(method=method, batch_size=8, seq_len=64, padding=True, gradient_checkpointing=checkpointing)
    measured = measure_training_step(model, padded_batch(8, 64))["total"]
    predicted = estimate(model, setup).peak
    assert estimate(model.config, setup).peak == predicted
    assert abs(predicted / measured - 1) < 0.15, (predicted, measured)


def test_zero_paper_worked_example():
    # Rajbhandari et al. (2020), figure 1: 7.5B parameters, mixed-precision Adam, 64 devices.
    per_device = []
    for stage in range(4):
        setup = Setup(precision="bf16-mixed", zero_stage=stage, num_devices=64)
        states = model_state_bytes(trainable=7.5e9, frozen_bytes=0, setup=setup)
        per_device.append(round(sum(states.values()) / GB, 1))
    assert per_device == [120.0, 31.4, 16.6, 1.9]


def test_bytes_per_parameter_of_each_precision_and_optimizer():
    def per_param(**kwargs):
        return sum(model_state_bytes(1e6, 0, Setup(**kwargs)).values()) / 1e6
    assert per_param(precision="bf16-mixed") == 16          # ZeRO's 2 + 2 + 12
    assert per_param(precision="fp32") == 16                 # 4 + 4 + 8
    assert per_param(precision="bf16") == 8                  # 2 + 2 + 2 + 2
    assert per_param(precision="fp32", optimizer="sgd") == 8
    assert per_param(precision="bf16-mixed", optimizer="adamw-8bit") == pytest.approx(10 + 8 / 256)


def test_qlora_base_costs_4_127_bits_per_linear_weight():
    from ftcourse.params import REAL_MODELS, count_parameters
    config = REAL_MODELS["LLaMA-65B"]
    counts = count_parameters(config)
    base = estimate(config, Setup(method=QLoRA(r=8), precision="bf16")).footprint.frozen_bytes
    linear = counts.attention + counts.ffn
    embeddings_and_head = 2 * (counts.total - linear)
    assert (base - embeddings_and_head) * 8 / linear == pytest.approx(4.127, abs=1e-3)


def test_activations_scale_with_batch_and_checkpointing_cuts_them():
    config = LlamaConfig(**OTHER)
    one = estimate(config, Setup(batch_size=1, seq_len=128))
    four = estimate(config, Setup(batch_size=4, seq_len=128))
    assert four.activations == pytest.approx(4 * one.activations)
    assert four.weights == one.weights
    checkpointed = estimate(config, Setup(batch_size=4, seq_len=128, gradient_checkpointing=True))
    assert checkpointed.activations + checkpointed.checkpoints < four.activations / 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(seq_len=-5), "seq_len must be a positive int"),
    (dict(precision="fp8"), "unknown precision 'fp8'"),
    (dict(optimizer="adam9"), "unknown optimizer 'adam9'"),
    (dict(num_devices=0), "num_devices must be a positive int"),
    (dict(zero_stage=4), "zero_stage must be 0, 1, 2 or 3"),
])
def test_impossible_setups_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Setup(**kwargs)


def test_unsupported_combinations_are_explained(base):
    config = base[0].config
    with pytest.raises(ValueError, match="Prefix tuning cannot use gradient checkpointing"):
        estimate(config, Setup(method=PrefixTuning(), gradient_checkpointing=True))
    with pytest.raises(ValueError, match="for a regex, apply the method to a model"):
        estimate(config, Setup(method=LoRA(targets=r".*q_proj")))
    with pytest.raises(ValueError, match="for 'ia3', apply it to a model"):
        estimate(config, Setup(method="ia3"))
    with pytest.raises(ValueError, match="Unknown method 'lora2'"):
        estimate(config, Setup(method="lora2"))


def test_preflight_warns_with_the_breakdown_and_what_would_help(base):
    config = base[0].config
    setup = Setup(batch_size=64, seq_len=512)
    with pytest.warns(MemoryWarning) as caught:
        preflight(config, setup, available=10_000_000)
    message = str(caught[0].message)
    assert "more than the 10.00 MB available" in message and "activations" in message
    assert "gradient checkpointing" in message and "smaller batch (now 64)" in message
    assert "--" not in message                    # no command-line flags unless asked for
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert preflight(config, setup, available=10**12).peak < 10**12


def test_preflight_refuses_with_the_same_message_and_the_estimate(base):
    config = base[0].config
    setup = Setup(batch_size=64, seq_len=512)
    with pytest.raises(WontFit, match="more than the 10.00 MB available") as refused:
        preflight(config, setup, available=10_000_000, refuse=True)
    assert isinstance(refused.value, MemoryError)
    assert refused.value.estimate == estimate(config, setup) and refused.value.available == 10_000_000
    assert str(refused.value.estimate) in str(refused.value)
    with pytest.warns(MemoryWarning) as caught:
        preflight(config, setup, available=10_000_000)
    assert str(caught[0].message) == str(refused.value)
    assert preflight(config, setup, available=10**12, refuse=True).peak < 10**12


def test_suggestions_name_the_flags_they_are_given(base):
    result = estimate(base[0].config, Setup(batch_size=64, seq_len=512))
    flags = {"method": "--method", "batch_size": "--batch-size"}
    tips = suggestions(result, flags)
    assert "train fewer parameters: LoRA (--method lora, the base stays frozen" in tips[0]
    assert any("a smaller batch (--batch-size, now 64)" in tip for tip in tips)
    assert any("gradient checkpointing (keeps one" in tip for tip in tips)   # no flag given for it
    assert [re.sub(r"--[a-z-]+( [a-z-]+)?, ", "", tip) for tip in tips] == suggestions(result)


def test_lora_targets_the_config_lacks_are_a_clear_error(base):
    with pytest.raises(ValueError, match=r"LoRA targets \['qproj'\] match no linear layer.*Fix LoRA.targets"):
        estimate(base[0].config, Setup(method=QLoRA(targets=("qproj", "v_proj"))))


@pytest.mark.parametrize("trainer", ["sft", "dpo", "reward"])
def test_every_trainer_runs_the_preflight_before_it_trains(monkeypatch, base, trainer):
    import ftcourse.memory.plan
    from ftcourse.data import load_task
    from ftcourse.dpo import train_dpo
    from ftcourse.reward import train_reward_model
    from ftcourse.sft import finetune
    from ftcourse.train import TrainConfig

    monkeypatch.setattr(ftcourse.memory.plan, "available_memory", lambda device: 1000)
    model, tokenizer = copy.deepcopy(base[0]), base[1]
    config = TrainConfig(max_steps=1, batch_size=2)
    runs = {"sft": lambda: finetune(model, tokenizer, load_task("qa")["train"].select(range(2)), "full",
                                    config, progress=False),
            "dpo": lambda: train_dpo(model, tokenizer, load_task("preferences")["train"].select(range(2)),
                                     config, progress=False),
            "reward": lambda: train_reward_model(model, tokenizer,
                                                 load_task("preferences")["train"].select(range(2)), config,
                                                 progress=False)}
    with pytest.warns(MemoryWarning, match="predicted to need"):
        runs[trainer]()


def test_the_training_loop_itself_trains_whatever_it_is_given(monkeypatch, tiny_llama):
    import ftcourse.memory.plan
    from ftcourse.train import TrainConfig, train

    monkeypatch.setattr(ftcourse.memory.plan, "available_memory", lambda device: 1000)
    data = [{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}, {"input_ids": [5, 6], "labels": [5, 6]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemoryWarning)    # the callers plan a run; the loop does not
        train(tiny_llama, data, TrainConfig(max_steps=1, batch_size=2), progress=False)


def test_the_preflight_counts_the_runs_optimizer(base):
    from ftcourse.memory import plan_run

    model, examples = base[0], [{"input_ids": list(range(3, 40))}]
    eight_bit = plan_run(model, examples, TrainConfig(max_steps=1, optimizer="adamw-8bit"))
    fp32 = plan_run(model, examples, TrainConfig(max_steps=1))
    assert (eight_bit.setup.optimizer, fp32.setup.optimizer) == ("adamw-8bit", "adamw")
    assert eight_bit.optimizer < 0.3 * fp32.optimizer      # full fine-tuning: about a quarter
