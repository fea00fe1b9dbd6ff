"""A decoder-only transformer in plain PyTorch, equal to Hugging Face's Llama (tests prove it).

    tokens -> embed_tokens -> [ x + Attention(RMSNorm(x)) ; x + MLP(RMSNorm(x)) ] x L -> RMSNorm -> lm_head

Attention mixes information between positions (causal, rotary positions, grouped key/value
heads); the MLP (SwiGLU feed-forward) transforms each position on its own. Submodules carry HF
Llama's names, so a `LlamaForCausalLM` state dict loads with strict=True and a peft
`target_modules` list picks the same layers here and there.
Library twin: transformers.LlamaForCausalLM; tests/test_transformer.py compares logits.
Shapes: B batch, T sequence length, D hidden size, H query heads, K key/value heads, hd head size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class TransformerConfig:
    """The sizes of a Llama-style decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_positions")
        problems = [f"{name} must be >= 1, got {getattr(self, name)}" for name in sizes
                    if getattr(self, name) < 1]
        if not problems and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                            f"({self.num_kv_heads}): each key/value head serves an equal group of "
                            "query heads")
        if problems:
            raise ValueError("Invalid TransformerConfig: " + "; ".join(problems) + ".")

    @classmethod
    def from_hf(cls, config: Any) -> TransformerConfig:
        """The same sizes as a transformers `LlamaConfig` (plain RoPE only)."""
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"RoPE type {rope['rope_type']!r} is not implemented here; only plain "
                             "RoPE (rope_type 'default') is. Use the transformers model instead.")
        heads = config.num_attention_heads
        return cls(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                   intermediate_size=config.intermediate_size, num_layers=config.num_hidden_layers,
                   num_heads=heads, num_kv_heads=config.num_key_value_heads or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   max_positions=config.max_position_embeddings,
                   rope_theta=rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)),
                   rms_norm_eps=config.rms_norm_eps, tie_embeddings=config.tie_word_embeddings)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring or bias, in float32."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles, (B, T, hd): pair i turns by pos * theta^(-2i/hd)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim
    inv_freq = 1.0 / theta ** exponents
    angles = positions[..., None].float() * inv_freq          # (B, T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)              # HF pairs dim i with dim i + hd/2
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each (x_i, x_{i+hd/2}) pair of x (B, heads, T, hd) by its angle."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    """Causal self-attention with grouped key/value heads (K <= H; each K head serves H/K queries)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor,
                return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D), positions (B, T), mask (B, 1, T, T) of booleans (True = may attend)."""
        B, T, _ = x.shape
        H, K, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hd).transpose(1, 2)          # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, K, hd).transpose(1, 2)          # (B, K, T, hd)
        v = self.v_proj(x).view(B, T, K, hd).transpose(1, 2)          # (B, K, T, hd)
        cos, sin = rope_angles(positions, hd, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = k.repeat_interleave(H // K, dim=1)                        # (B, H, T, hd): share K heads
        v = v.repeat_interleave(H // K, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)             # (B, H, T, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).reshape(B, T, H * hd)    # (B, T, H*hd)
        return self.o_proj(out), (weights if return_weights else None)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), D -> intermediate -> D, per position."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One layer: attention then feed-forward, each reading a normalised copy of the residual stream."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor,
                return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.self_attn(self.input_layernorm(x), positions, mask, return_weights)
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, weights


@dataclass
class TransformerOutput:
    """Logits (B, T, vocab); per layer, if asked: the residual stream and attention weights."""

    logits: Tensor
    hidden_states: list[Tensor] | None = None
    attentions: list[Tensor] | None = None


class Transformer(nn.Module):
    """The whole decoder. `model.*` and `lm_head` are named as in HF's LlamaForCausalLM."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict({
            "embed_tokens": nn.Embedding(config.vocab_size, config.hidden_size),
            "layers": nn.ModuleList(Block(config) for _ in range(config.num_layers)),
            "norm": RMSNorm(config.hidden_size, config.rms_norm_eps),
        })
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model["embed_tokens"].weight   # one matrix, used twice

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> TransformerOutput:
        """input_ids (B, T); attention_mask (B, T) with 0 on padding; position_ids (B, T)."""
        B, T = input_ids.shape
        if self.config.max_positions < T:
            raise ValueError(f"Sequence of {T} tokens is longer than the model's "
                             f"{self.config.max_positions} positions; shorten it.")
        if T and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < self.config.vocab_size:
            raise ValueError(f"Token ids range over {int(input_ids.min())}..{int(input_ids.max())}, outside "
                             f"the vocabulary of {self.config.vocab_size}; were they made by another "
                             "tokenizer?")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:  # count from each row's first real token (left padding)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()    # (B, 1, T, T)
        x = self.model["embed_tokens"](input_ids)
        hidden_states, attentions = [x], []
        for block in self.model["layers"]:
            x, weights = block(x, position_ids, mask, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        logits = self.lm_head(self.model["norm"](x))
        return TransformerOutput(logits, hidden_states if output_hidden_states else None,
                                 attentions if output_attentions else None)

    @classmethod
    def from_hf(cls, hf_model: Any) -> Transformer:
        """A copy of a transformers `LlamaForCausalLM` (weights included) in this code, on its device."""
        model = cls(TransformerConfig.from_hf(hf_model.config))
        state = {k: v for k, v in hf_model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
        if model.config.tie_embeddings:
            state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
        model.load_state_dict(state, strict=True)
        weight = next(hf_model.parameters())
        return model.to(device=weight.device, dtype=weight.dtype)


@contextmanager
def ablated(model: nn.Module, layer: int, part: Literal["attention", "ffn"]) -> Iterator[nn.Module]:
    """Within the `with` block, one layer's attention or FFN adds nothing to the residual stream.

    Zeroes the output projection (`o_proj` or `down_proj`) and restores it afterwards. Works on
    this module and on transformers' Llama alike, since both use the same names.
    """
    if part not in ("attention", "ffn"):
        raise ValueError(f"part must be 'attention' or 'ffn', got {part!r}.")
    layers = model.model.layers
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer must be in 0..{len(layers) - 1}, got {layer}.")
    projection = layers[layer].self_attn.o_proj if part == "attention" else layers[layer].mlp.down_proj
    saved = projection.weight.detach().clone()
    with torch.no_grad():
        projection.weight.zero_()
    try:
        yield model
    finally:
        with torch.no_grad():
            projection.weight.copy_(saved)
