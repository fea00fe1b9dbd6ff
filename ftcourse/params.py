"""Where the parameters live: counts per component and FLOPs per token, from a config alone.

No weights are needed: a Llama-family config (vocabulary V, hidden size D, feed-forward size F,
layers L, query heads H, key/value heads K, head size hd) fixes every matrix. Per layer:
attention q and o are D x H*hd each, k and v D x K*hd each; the SwiGLU FFN is three D x F
matrices; two RMSNorm vectors of D. Plus the embedding (V x D), a final norm and, unless tied to
the embedding, an LM head (V x D). Tested against sum(p.numel()) of the instantiated models.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

# Public configuration facts of real models (from their config.json on the hub), with the
# parameter totals their authors publish, for checking the counts without downloading anything.
REAL_MODELS: dict[str, dict[str, Any]] = {
    "SmolLM2-135M": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         published=134_515_008),
    # The GPU profile's base model; its hub page gives 362M parameters (rounded).
    "SmolLM2-360M": dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, tie_word_embeddings=True,
                         published=362_000_000),
    "Qwen2.5-0.5B": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                         qkv_bias=True, published=494_032_768),
    "Llama-2-7B": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
                       published=6_738_415_616),
    "Mistral-7B": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                       published=7_241_732_096),
    "Llama-3-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                       published=8_030_261_248),
    "Llama-2-13B": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, tie_word_embeddings=False,
                        published=13_015_864_320),
    "LLaMA-65B": dict(vocab_size=32000, hidden_size=8192, intermediate_size=22016, num_hidden_layers=80,
                      num_attention_heads=64, num_key_value_heads=64, tie_word_embeddings=False,
                      published=65_285_660_672),
}


@dataclass(frozen=True)
class ParameterCount:
    """Parameters by component (whole model) and the per-layer breakdown behind them."""

    embeddings: int
    attention: int          # q, k, v, o of all layers (with biases, if any)
    ffn: int                # gate, up, down of all layers
    norms: int              # two per layer and the final one
    lm_head: int            # 0 when tied to the embeddings
    per_layer: dict[str, int]

    @property
    def total(self) -> int:
        return self.embeddings + self.attention + self.ffn + self.norms + self.lm_head

    @property
    def ffn_share(self) -> float:
        """The FFN's share of all parameters (the article: "roughly two-thirds")."""
        return self.ffn / self.total

    @property
    def ffn_share_of_layers(self) -> float:
        """The FFN's share of the transformer layers alone (embeddings and head left out)."""
        layers = self.attention + self.ffn + self.norms
        return self.ffn / layers

    def as_dict(self) -> dict[str, int]:
        return {"embeddings": self.embeddings, "attention": self.attention, "ffn": self.ffn,
                "norms": self.norms, "lm_head": self.lm_head, "total": self.total}


def config_value(config: Any, key: str, default: Any = None) -> Any:
    """A field of a config given as a dict or as a transformers config object."""
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def linear_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each linear layer of one transformer layer, by its HF name."""
    get = partial(config_value, config)
    D, F, H = get("hidden_size"), get("intermediate_size"), get("num_attention_heads")
    K, hd = get("num_key_value_heads") or H, get("head_dim") or D // H
    return {"q_proj": (D, H * hd), "k_proj": (D, K * hd), "v_proj": (D, K * hd), "o_proj": (H * hd, D),
            "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}


def count_parameters(config: Any) -> ParameterCount:
    """Parameter counts of a Llama-family model from its config (a dict or a transformers config)."""
    get = partial(config_value, config)
    V, D, L = get("vocab_size"), get("hidden_size"), get("num_hidden_layers")
    qkv_bias = bool(get("qkv_bias") or get("attention_bias") or get("model_type") == "qwen2")
    biased = {**dict.fromkeys(("q_proj", "k_proj", "v_proj"), qkv_bias),
              "o_proj": bool(get("attention_bias")),
              **dict.fromkeys(("gate_proj", "up_proj", "down_proj"), bool(get("mlp_bias")))}
    per_layer = {name: d_in * d_out + (d_out if biased[name] else 0)
                 for name, (d_in, d_out) in linear_shapes(config).items()}
    per_layer["norms"] = 2 * D
    attention = sum(per_layer[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj"))
    ffn = sum(per_layer[k] for k in ("gate_proj", "up_proj", "down_proj"))
    tied = get("tie_word_embeddings", False)
    return ParameterCount(embeddings=V * D, attention=L * attention, ffn=L * ffn,
                          norms=L * per_layer["norms"] + D, lm_head=0 if tied else V * D,
                          per_layer=per_layer)


def flops_per_token(config: Any, seq_len: int) -> dict[str, float]:
    """Matmul FLOPs per token for a forward pass and a training step (forward + backward).

    Forward: 2 FLOPs per weight of every linear layer, the LM head included even when tied (it is
    a matmul either way), plus attention's QK^T and AV products, 2 * 2 * T * H * hd per layer at
    context T (Kaplan et al. 2020, table 1). A training step costs 3x the forward (the backward
    computes gradients for inputs and weights: 2x).
    """
    counts = count_parameters(config)
    get = partial(config_value, config)
    D, H, L, V = get("hidden_size"), get("num_attention_heads"), get("num_hidden_layers"), get("vocab_size")
    hd = get("head_dim") or D // H
    matmul_weights = counts.attention + counts.ffn + V * D
    forward = 2 * matmul_weights + 2 * 2 * L * seq_len * H * hd
    return {"forward": float(forward), "train_step": float(3 * forward)}


ARTICLE_FFN_SHARE = 2 / 3   # "roughly two-thirds of its parameters"
TOLERANCE = 0.1             # "roughly": within 10% of 2/3, i.e. 0.60 to 0.73


def ffn_verdict(counts: ParameterCount) -> str:
    """The article's claim checked on one model: does the FFN hold roughly two-thirds?"""
    if abs(counts.ffn_share - ARTICLE_FFN_SHARE) <= TOLERANCE * ARTICLE_FFN_SHARE:
        return "holds"
    if counts.ffn_share > ARTICLE_FFN_SHARE:
        return "does not hold: the FFN holds more"
    embeddings = (counts.embeddings + counts.lm_head) / counts.total
    if embeddings >= 0.15:
        return f"does not hold: embeddings take {embeddings:.0%}"
    return "does not hold: the FFN holds less"


def count_lora_parameters(model_config: Any, config: Any) -> int:
    """Trainable parameters of a LoRA `config` (its `r` and `targets`) on a Llama-family model,
    from the model's config alone: r * (d_in + d_out) for each adapted linear layer of each layer."""
    shapes = linear_shapes(model_config)
    if isinstance(config.targets, str) and config.targets != "all-linear":
        raise ValueError("count_lora_parameters takes module names or 'all-linear'; for a regex, apply "
                         "the LoRA to a model and count its trainable parameters.")
    names = list(shapes) if config.targets == "all-linear" else [n for n in shapes if n in config.targets]
    return config_value(model_config, "num_hidden_layers") * sum(config.r * sum(shapes[n]) for n in names)
