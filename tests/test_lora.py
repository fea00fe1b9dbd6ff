import copy
import json

import pytest
import torch

from ftcourse.batching import causal_lm_loss, pad_batch
from ftcourse.lora import (
    LoRA,
    LoRALinear,
    adapters_disabled,
    apply_lora,
    from_peft_state,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    peft_name,
    save_adapter,
    to_peft_state,
    unmerge_lora,
)
from ftcourse.tolerance import assert_close, loss_path, transformer_path


def randomize_(model, seed: int = 0):
    """Non-zero B (and fresh A), and DoRA's lengths moved off ||W0||: with B = 0 any LoRA
    implementation would pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for part in (layer.lora_A, layer.lora_B):
                part.weight.copy_(torch.randn(part.weight.shape, generator=generator) * 0.1)
            if hasattr(layer, "magnitude"):
                layer.magnitude.mul_(1 + 0.1 * torch.randn(layer.magnitude.shape, generator=generator))
    return model


@pytest.mark.equivalence
def test_lora_linear_in_float64_is_the_formula():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8).double()
    layer = LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    layer.double()
    randomize_(torch.nn.ModuleDict({"x": layer}))
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    expected = base(x) + 2.0 * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert_close(layer(x), expected, n=16 + 4 + 1)      # W0 x (16 terms), A x (16), B (A x) (4), the sum


def test_fresh_lora_model_equals_the_base_exactly(base):
    model, tokenizer = base
    ids = tokenizer(["Quadra Kapels lives in"], return_tensors="pt")["input_ids"]
    adapted = apply_lora(copy.deepcopy(model), LoRA(r=8, alpha=16))
    with torch.no_grad():
        assert torch.equal(adapted(ids).logits, model(ids).logits)


def test_only_adapter_parameters_train(base):
    adapted = apply_lora(copy.deepcopy(base[0]), LoRA(r=4, targets="all-linear"))
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not any("lm_head" in n for n in lora_layers(adapted))   # all-linear leaves the head alone
    c = adapted.config
    D, F, q, kv = c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim, \
        c.num_key_value_heads * c.head_dim
    per_layer = 4 * ((D + q) + 2 * (D + kv) + (q + D) + 3 * (D + F))   # r * (d_in + d_out) each
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == c.num_hidden_layers * per_layer


@pytest.mark.equivalence
@pytest.mark.parametrize("config", [LoRA(r=4, alpha=8), LoRA(r=8, alpha=16, targets="all-linear"),
                                    LoRA(r=2, alpha=4, rslora=True, targets=r".*\.mlp\.(up|down)_proj"),
                                    LoRA(r=4, alpha=8, dora=True, targets="all-linear")], ids=str)
def test_logits_and_gradients_match_peft(base, config):
    """Same logits and the same gradient for every adapter weight: then the same training loop
    (tests/test_train.py) takes the same steps on both."""
    import peft

    model, tokenizer = base
    ours = randomize_(apply_lora(copy.deepcopy(model), config))
    theirs = peft.get_peft_model(copy.deepcopy(model), config.to_peft())
    theirs.load_state_dict(to_peft_state(ours), strict=True)
    texts = ["Quadra Kapels lives in Zellin.", "3 plus 4 is 7."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    tokens = batch["input_ids"].shape[1]
    logits = {"ours": ours(**batch).logits, "theirs": theirs(**batch).logits}
    assert_close(logits["ours"], logits["theirs"], n=transformer_path(model.config, tokens), msg="logits")

    examples = [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]
    for adapted in (ours, theirs):
        causal_lm_loss(adapted, pad_batch(examples, tokenizer.pad_token_id))[0].backward()
    their_grads = {name: p.grad for name, p in theirs.named_parameters() if p.requires_grad}
    # The loss's path, then backward retraces the forward one.
    count = sum(len(ex["input_ids"]) for ex in examples)
    n = loss_path(model.config, tokens, count) + transformer_path(model.config, tokens)
    for name, p in ours.named_parameters():
        if p.requires_grad:
            assert_close(p.grad, their_grads[peft_name(name)], n=n, msg=name)
    assert set(their_grads) == {peft_name(name) for name, p in ours.named_parameters() if p.requires_grad}


@pytest.mark.equivalence
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_adapters_round_trip_ours_peft_ours(base, tmp_path, dora):
    import peft

    model, tokenizer = base
    config = LoRA(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), dora=dora)
    ours = randomize_(apply_lora(copy.deepcopy(model), config))
    save_adapter(ours, tmp_path / "ours", config, base_model_name="ftcourse/tiny-llama")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "ours")
    ids = tokenizer(["Where does Quadra Kapels live?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert_close(theirs(ids).logits, ours(ids).logits, n=transformer_path(model.config, ids.shape[1]))
    theirs.save_pretrained(tmp_path / "theirs")
    again = load_adapter(copy.deepcopy(model), tmp_path / "theirs")
    for key, tensor in lora_state_dict(ours).items():
        assert torch.equal(lora_state_dict(again)[key], tensor), key
    saved = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    written = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert {k: saved[k] for k in written if k != "target_modules"} == \
        {k: v for k, v in written.items() if k != "target_modules"}
    assert sorted(saved["target_modules"]) == written["target_modules"]


@pytest.mark.equivalence
def test_merge_then_unmerge_restores_the_base_weights(base):
    model, tokenizer = base
    config = LoRA(r=8, targets="all-linear")
    adapted = randomize_(apply_lora(copy.deepcopy(model), config))
    before = {n: p.clone() for n, p in adapted.named_parameters() if "base_layer" in n}
    deltas = {f"{name}.base_layer.weight": layer.delta_weight()
              for name, layer in lora_layers(adapted).items()}
    ids = tokenizer(["The pet of Quadra Kapels is a"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        unmerged = adapted(ids).logits
        merge_lora(adapted)
        # Merged weights W0 + s B A add the adapter's r-term sums to every matmul of the path.
        n = transformer_path(model.config, ids.shape[1]) + model.config.num_hidden_layers * 2 * config.r
        assert_close(adapted(ids).logits, unmerged, n=n, msg="merged vs unmerged logits")
        unmerge_lora(adapted)
    for name, p in adapted.named_parameters():
        if name in before:   # (W0 + dW) - dW: two roundings of numbers as large as |W0| + |dW|
            scale = (before[name].abs().max() + deltas[name].abs().max()).item()
            assert_close(p, before[name], n=2, scale=scale, msg=name)


def test_disabled_adapters_give_the_base_model(base):
    model, tokenizer = base
    adapted = randomize_(apply_lora(copy.deepcopy(model), LoRA()))
    ids = tokenizer(["Hello"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), adapters_disabled(adapted):   # the base layers alone: the same operations
        assert torch.equal(adapted(ids).logits, model(ids).logits)
    with torch.no_grad():
        assert not torch.equal(adapted(ids).logits, model(ids).logits)


def test_swapping_adapters_on_one_base(base, tmp_path):
    model, tokenizer = base
    config = LoRA(r=4)
    first = randomize_(apply_lora(copy.deepcopy(model), config), seed=1)
    second = randomize_(apply_lora(copy.deepcopy(model), config), seed=2)
    save_adapter(first, tmp_path / "a", config)
    save_adapter(second, tmp_path / "b", config)
    shared = apply_lora(copy.deepcopy(model), config)
    ids = tokenizer(["Hello"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for name, reference in [("a", first), ("b", second), ("a", first)]:
            load_adapter(shared, tmp_path / name)
            assert torch.equal(shared(ids).logits, reference(ids).logits)   # the same weights, bit for bit


def test_bad_configs_and_targets_are_clear_errors(base):
    with pytest.raises(ValueError, match="r must be a positive int, got 0"):
        LoRA(r=0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        LoRA(alpha=-1)
    message = (r"Target module\(s\) \['qkv'\] match no Linear in LlamaForCausalLM; available names: "
               r"\['down_proj', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]")
    with pytest.raises(ValueError, match=message):
        apply_lora(copy.deepcopy(base[0]), LoRA(targets=("q_proj", "qkv")))
    with pytest.raises(ValueError, match="match no Linear"):
        apply_lora(copy.deepcopy(base[0]), LoRA(targets=r"nothing\..*"))


def test_loading_an_adapter_for_another_base_names_the_shape_mismatch(base, tmp_path):
    from transformers import LlamaForCausalLM

    config = LoRA(r=4)
    save_adapter(apply_lora(copy.deepcopy(base[0]), config), tmp_path, config)
    narrower = base[0].config.to_dict() | {"hidden_size": 64, "intermediate_size": 192, "head_dim": 32}
    other = LlamaForCausalLM(type(base[0].config)(**narrower))
    message = (r"Shape mismatch for model.layers.0.self_attn.q_proj: the adapter's lora_A is \(4, 128\) "
               r"but this model needs \(4, 64\)")
    with pytest.raises(ValueError, match=message):
        load_adapter(other, tmp_path)
    with pytest.raises(ValueError, match="has weights for modules this model lacks"):
        load_adapter(apply_lora(copy.deepcopy(base[0]), LoRA(r=4, targets=("q_proj",))), tmp_path)


def test_lora_loss_gradients_reach_only_the_adapters(base):
    model, tokenizer = base
    adapted = apply_lora(copy.deepcopy(model), LoRA(r=4))
    batch = pad_batch([{"input_ids": tokenizer("Axbury is a city.")["input_ids"]}], tokenizer.pad_token_id)
    loss_sum, count = causal_lm_loss(adapted, batch)
    (loss_sum / count).backward()
    grads = {n: p.grad for n, p in adapted.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)   # B gets a gradient at B = 0


def test_lora_parameter_count_from_config(base):
    from ftcourse.params import REAL_MODELS, count_lora_parameters

    for config in (LoRA(r=4), LoRA(r=8, targets="all-linear"), LoRA(r=2, targets=("gate_proj", "o_proj"))):
        adapted = apply_lora(copy.deepcopy(base[0]), config)
        assert count_lora_parameters(base[0].config, config) == sum(
            p.numel() for p in adapted.parameters() if p.requires_grad)
    # torchtune's LoRA tutorial: Llama-2-7B, q and v, rank 8 -> 4,194,304 trainable parameters.
    assert count_lora_parameters(REAL_MODELS["Llama-2-7B"], LoRA(r=8)) == 4_194_304


@pytest.mark.equivalence
def test_peft_state_maps_every_weight_both_ways(base):
    import peft

    model, _ = base
    config = LoRA(r=4, alpha=8, targets="all-linear")
    ours = randomize_(apply_lora(copy.deepcopy(model), config))
    theirs = peft.get_peft_model(copy.deepcopy(model), config.to_peft())
    theirs.load_state_dict(to_peft_state(ours), strict=True)          # every weight, by name
    again = apply_lora(copy.deepcopy(model), config)
    again.load_state_dict(from_peft_state(theirs.state_dict()), strict=True)
    assert all(torch.equal(again.state_dict()[key], tensor) for key, tensor in ours.state_dict().items())


@pytest.mark.equivalence
def test_dora_merges_into_the_weights_peft_merges_and_unmerges_back(base):
    import peft

    model, tokenizer = base
    config = LoRA(r=4, alpha=8, dora=True, targets="all-linear")
    ours = randomize_(apply_lora(copy.deepcopy(model), config))
    theirs = peft.get_peft_model(copy.deepcopy(model), config.to_peft())
    theirs.load_state_dict(to_peft_state(ours), strict=True)
    ids = tokenizer(["Where does Quadra Kapels live?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted_logits = ours(ids).logits
    merged_theirs = theirs.merge_and_unload()
    merge_lora(ours)
    for name, layer in lora_layers(ours).items():
        # B A (r terms), the row norm (d_in terms), the sum, the ratio, the product.
        assert_close(layer.base_layer.weight, merged_theirs.get_submodule(name).weight,
                     n=config.r + layer.base_layer.in_features + 3, msg=name)
    with torch.no_grad():
        assert_close(ours(ids).logits, adapted_logits, n=transformer_path(model.config, ids.shape[1]))
    unmerge_lora(ours)
    for name, layer in lora_layers(ours).items():
        original = model.get_submodule(name).weight
        assert_close(layer.base_layer.weight, original, n=2 * (config.r + layer.base_layer.in_features + 3),
                     scale=original.abs().max().item(), msg=name)


def test_a_fresh_dora_adapter_changes_nothing(base):
    model, tokenizer = base
    adapted = apply_lora(copy.deepcopy(model), LoRA(r=4, dora=True, targets="all-linear"))
    ids = tokenizer(["Where does Quadra Kapels live?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert_close(adapted(ids).logits, model(ids).logits, n=transformer_path(model.config, ids.shape[1]))
    for layer in lora_layers(adapted).values():
        assert torch.equal(layer.magnitude, torch.linalg.norm(layer.base_layer.weight, dim=1))


@pytest.mark.equivalence
def test_pissa_initialisation_equals_peft_and_keeps_the_outputs(base, tmp_path):
    import peft

    model, tokenizer = base
    config = LoRA(r=4, alpha=8, targets="all-linear", init="pissa")
    ours = apply_lora(copy.deepcopy(model), config)
    theirs = peft.get_peft_model(copy.deepcopy(model), config.to_peft())
    their_state = from_peft_state(theirs.state_dict())
    for name, tensor in ours.state_dict().items():       # A, B and the residual base: the same operations
        assert torch.equal(tensor, their_state[name]), name
    ids = tokenizer(["Where does Quadra Kapels live?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert_close(ours(ids).logits, model(ids).logits, n=transformer_path(model.config, ids.shape[1]))
    layer = lora_layers(ours)["model.layers.0.mlp.up_proj"]
    singular = torch.linalg.svdvals(model.model.layers[0].mlp.up_proj.weight)
    # B A holds the top 4 singular directions. An SVD is backward stable: each value errs by about
    # eps * ||W||, over the matrix's dimensions.
    assert_close(torch.linalg.svdvals(layer.delta_weight())[:4], singular[:4],
                 n=sum(layer.base_layer.weight.shape))
    with pytest.raises(ValueError, match="PiSSA adapters"):
        save_adapter(ours, tmp_path, config)
    with pytest.raises(ValueError, match="init must be 'default' or 'pissa'"):
        LoRA(init="olora")
