import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftcourse.tolerance import assert_close, transformer_path
from ftcourse.transformer import RMSNorm, Transformer, TransformerConfig, apply_rope, rope_angles

RANDOM_CONFIGS = {
    "grouped kv heads, untied head": dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                                          num_attention_heads=6, num_key_value_heads=2,
                                          tie_word_embeddings=False),
    "multi-head, tied head, head_dim != D/H": dict(hidden_size=64, intermediate_size=128,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=4, head_dim=24,
                                                   tie_word_embeddings=True),
}


def random_llama(seed: int = 0, **sizes) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, max_position_embeddings=128, rms_norm_eps=1e-6, **sizes)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-default norms, so a forgotten norm weight cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def assert_same_logits(hf_model, input_ids, attention_mask=None):
    ours = Transformer.from_hf(hf_model).eval()
    with torch.no_grad():
        theirs = hf_model(input_ids=input_ids, attention_mask=attention_mask).logits
        mine = ours(input_ids, attention_mask).logits
    if attention_mask is not None:  # padded positions are not compared
        keep = attention_mask.bool()
        theirs, mine = theirs[keep], mine[keep]
    assert_close(mine, theirs, n=transformer_path(hf_model.config, input_ids.shape[1]), msg="logits")


@pytest.mark.equivalence
def test_embedded_model_logits_match_transformers(base):
    model, tokenizer = base
    ids = tokenizer(["Quadra Kapels lives in Zellin and keeps a pet rabbit.", "3 plus 4 is"],
                    padding=True, return_tensors="pt")
    assert_same_logits(model, ids["input_ids"][:1])
    assert_same_logits(model, ids["input_ids"], ids["attention_mask"])


@pytest.mark.equivalence
@pytest.mark.parametrize("name", list(RANDOM_CONFIGS))
def test_random_llama_logits_match_transformers(name):
    hf_model = random_llama(**RANDOM_CONFIGS[name])
    input_ids = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    assert_same_logits(hf_model, input_ids)
    mask = torch.ones_like(input_ids)
    mask[1, :7] = 0   # left padding
    mask[2, :20] = 0
    assert_same_logits(hf_model, input_ids, mask)


def test_tied_head_shares_the_embedding_matrix():
    ours = Transformer.from_hf(random_llama(**RANDOM_CONFIGS["multi-head, tied head, head_dim != D/H"]))
    assert ours.lm_head.weight is ours.model["embed_tokens"].weight


def test_config_from_hf_reads_every_size():
    hf_config = random_llama(**RANDOM_CONFIGS["grouped kv heads, untied head"]).config
    config = TransformerConfig.from_hf(hf_config)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.num_layers) == (6, 2, 16, 3)
    assert not config.tie_embeddings and config.rms_norm_eps == 1e-6


def test_rmsnorm_normalises_to_unit_root_mean_square():
    x = torch.randn(4, 7, 32) * 5
    y = RMSNorm(32, eps=0.0)(x)   # computes in float32 whatever the input, as HF's LlamaRMSNorm
    # Two means of 32 squares (the norm's and this check's), a root and a division: n = 2 * 32 + 2.
    assert_close(y.pow(2).mean(-1), torch.ones(4, 7), n=66)


def test_rope_is_a_rotation_that_depends_on_relative_position():
    q, k = torch.randn(2, 1, 1, 16, dtype=torch.float64)
    def rotated_dot(pos_q, pos_k):
        cos_q, sin_q = (t.double() for t in rope_angles(torch.tensor([[pos_q]]), 16, 10000.0))
        cos_k, sin_k = (t.double() for t in rope_angles(torch.tensor([[pos_k]]), 16, 10000.0))
        return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum()
    # The angles are computed in float32, as in HF: position * frequency is rounded to float32, an
    # error of up to eps * position in the angle, so the rule runs in float32 with the dot product's
    # magnitude |q| |k| times the largest position as the scale, over its 16 terms.
    assert_close(rotated_dot(3, 1), rotated_dot(10, 8), n=16, dtype=torch.float32,
                 scale=(q.norm() * k.norm()).item() * 10)
    cos, sin = (t.double() for t in rope_angles(torch.tensor([[5]]), 16, 10000.0))
    assert_close(apply_rope(q, cos, sin).norm(), q.norm(), n=16, dtype=torch.float32,
                 scale=q.norm().item() * 5)
    assert abs(rotated_dot(3, 1) - rotated_dot(3, 2)) > 1e-3    # ... and it does depend on it


@pytest.mark.equivalence
def test_attention_is_causal():
    hf_model = random_llama(**RANDOM_CONFIGS["grouped kv heads, untied head"])
    model = Transformer.from_hf(hf_model).eval()
    ids = torch.randint(0, 300, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 300
    with torch.no_grad():
        assert_close(model(ids).logits[:, :8], model(changed).logits[:, :8],
                     n=transformer_path(hf_model.config, 12))


def test_too_long_input_and_unknown_rope_are_clear_errors():
    hf_model = random_llama(**RANDOM_CONFIGS["grouped kv heads, untied head"])
    with pytest.raises(ValueError, match="longer than the model's 128 positions"):
        Transformer.from_hf(hf_model)(torch.zeros(1, 129, dtype=torch.long))
    hf_model.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="RoPE type 'llama3' is not implemented"):
        TransformerConfig.from_hf(hf_model.config)


@pytest.mark.equivalence
def test_ablation_silences_one_part_and_restores_it():
    from ftcourse.transformer import ablated

    hf_model = random_llama(**RANDOM_CONFIGS["grouped kv heads, untied head"])
    ours = Transformer.from_hf(hf_model).eval()
    ids = torch.randint(0, 300, (2, 10))
    before = hf_model(ids).logits.detach()
    for part in ("attention", "ffn"):
        with torch.no_grad(), ablated(hf_model, 1, part), ablated(ours, 1, part):
            theirs = hf_model(ids).logits
            assert_close(ours(ids).logits, theirs, n=transformer_path(hf_model.config, 10))
            assert (theirs - before).abs().max() > 1e-3
    assert torch.equal(hf_model(ids).logits.detach(), before)    # restored: the same weights and operations
    with pytest.raises(ValueError, match="layer must be in 0..2, got 3"), ablated(ours, 3, "ffn"):
        pass
