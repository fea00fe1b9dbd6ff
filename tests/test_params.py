import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ftcourse.params import REAL_MODELS, count_parameters, flops_per_token


def hf_config(facts: dict):
    sizes = {k: v for k, v in facts.items() if k not in ("published", "qkv_bias")}
    return Qwen2Config(**sizes) if facts.get("qkv_bias") else LlamaConfig(**sizes)


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_count_equals_the_instantiated_model(name):
    facts = REAL_MODELS[name]
    config = hf_config(facts)
    with torch.device("meta"):   # every shape, no memory: even the 65B model instantiates
        model = (Qwen2ForCausalLM if facts.get("qkv_bias") else LlamaForCausalLM)(config)
    assert count_parameters(facts).total == sum(p.numel() for p in model.parameters())
    assert count_parameters(config).total == count_parameters(facts).total


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_count_equals_the_published_total(name):
    facts = REAL_MODELS[name]
    assert abs(count_parameters(facts).total - facts["published"]) <= 0.005 * facts["published"]


def test_embedded_model_count(base):
    model, _ = base
    counts = count_parameters(model.config)
    assert counts.total == sum(p.numel() for p in model.parameters())
    by_name = {"embeddings": "embed_tokens", "attention": "self_attn", "ffn": "mlp", "norms": "norm"}
    for part, key in by_name.items():
        assert getattr(counts, part) == sum(p.numel() for n, p in model.named_parameters() if key in n)


def test_flops_follow_the_6n_rule_at_short_context():
    facts = REAL_MODELS["Llama-2-7B"]
    counts = count_parameters(facts)
    flops = flops_per_token(facts, seq_len=1)
    # With tiny context, a training step is ~6 FLOPs per weight of every matmul (the head included).
    matmul = counts.attention + counts.ffn + counts.embeddings
    assert flops["train_step"] == pytest.approx(6 * matmul, rel=1e-3)
    long = flops_per_token(facts, seq_len=4096)["forward"]
    assert long - flops["forward"] == 4 * 32 * 4095 * 4096


def test_ffn_verdicts_name_the_reason():
    from ftcourse.params import ffn_verdict

    verdicts = {name: ffn_verdict(count_parameters(facts)) for name, facts in REAL_MODELS.items()}
    assert verdicts["Llama-2-7B"] == "holds"
    assert verdicts["Mistral-7B"] == "does not hold: the FFN holds more"
    assert verdicts["SmolLM2-135M"] == "does not hold: embeddings take 21%"
