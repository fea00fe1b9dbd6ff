"""Soft prompts: prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021), from scratch.

Prompt tuning learns N virtual-token embeddings placed in front of every input's embeddings.
Prefix tuning learns N keys and values for the attention of every layer, handed to the model as
an already-filled KV cache, so every real token can attend to them. The base model stays frozen
and untouched: both methods wrap it, and the wrapper returns logits for the real tokens only.
Library twin: peft `PromptTuningConfig` / `PrefixTuningConfig`; tests/test_prompts.py proves
logits and greedy generations equal, and that saved prompts load in peft.
Shapes: B batch, T real tokens, N virtual tokens, L layers, H key/value heads, D head dim.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ftcourse._surgery import freeze
from ftcourse.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def _check_num_virtual_tokens(value: Any, method: str) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{method}.num_virtual_tokens must be a positive int, got {value!r}.")


@dataclass(frozen=True)
class PromptTuning:
    """How to fine-tune: learn `num_virtual_tokens` input embeddings; the model stays frozen."""

    name: ClassVar[str] = "prompt_tuning"
    num_virtual_tokens: int = 20
    init_text: str | None = None      # None: random N(0, 1) rows (peft's RANDOM); else TEXT init

    def __post_init__(self) -> None:
        _check_num_virtual_tokens(self.num_virtual_tokens, "PromptTuning")

    def apply(self, model: nn.Module, tokenizer: Any = None) -> PromptTuningModel:
        return PromptTuningModel(model, self, _init_ids(self, model, tokenizer))

    def to_peft(self, tokenizer_name_or_path: str | None = None) -> Any:
        import peft

        text = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": self.init_text,
                "tokenizer_name_or_path": tokenizer_name_or_path} if self.init_text else {}
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens,
                                       **text)


@dataclass(frozen=True)
class PrefixTuning:
    """How to fine-tune: learn N keys and values per layer (optionally through an MLP)."""

    name: ClassVar[str] = "prefix_tuning"
    num_virtual_tokens: int = 10
    projection_dim: int | None = None  # None: learn the prefix directly; else Li & Liang's MLP
    init_text: str | None = None       # None: random N(0, 1), as peft; else the text's own keys/values

    def __post_init__(self) -> None:
        _check_num_virtual_tokens(self.num_virtual_tokens, "PrefixTuning")
        if self.init_text and self.projection_dim:
            raise ValueError("PrefixTuning.init_text sets the prefix itself: it needs projection_dim=None.")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"PrefixTuning.projection_dim must be None or >= 1, "
                             f"got {self.projection_dim!r}.")

    def apply(self, model: nn.Module, tokenizer: Any = None) -> PrefixTuningModel:
        return PrefixTuningModel(model, self, _init_ids(self, model, tokenizer))

    def to_peft(self) -> Any:
        import peft

        projection = ({"prefix_projection": True, "encoder_hidden_size": self.projection_dim}
                      if self.projection_dim else {})
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens,
                                       **projection)


def kv_shape(model_config: Any) -> tuple[int, int, int]:
    """(L layers, H key/value heads, D head dim) of a Llama-family config."""
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return model_config.num_hidden_layers, getattr(model_config, "num_key_value_heads", heads), head_dim


def text_ids(tokenizer: Any, text: str, n: int) -> Tensor:
    """peft's TEXT init: the tokens of `text` (BOS included), cut or tiled to `n`."""
    ids = tokenizer(text)["input_ids"]
    if len(ids) > n:
        warnings.warn(f"init_text has {len(ids)} tokens but there are {n} virtual tokens; "
                      f"using its first {n}.", stacklevel=4)
    return torch.tensor((ids * math.ceil(n / len(ids)))[:n])


def _init_ids(config: PromptTuning | PrefixTuning, model: nn.Module, tokenizer: Any) -> Tensor | None:
    # The token ids of config.init_text; without a tokenizer, the model's own, as peft loads it.
    if not config.init_text:
        return None
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    return text_ids(tokenizer, config.init_text, config.num_virtual_tokens)


class SoftPromptModel(nn.Module):
    """A frozen causal LM behind N learned virtual tokens: what prompt and prefix tuning share."""

    def __init__(self, model: nn.Module, method: PromptTuning | PrefixTuning):
        super().__init__()
        self.base_model, self.method, self.config = freeze(model), method, model.config
        self.num_virtual_tokens = method.num_virtual_tokens
        if self.num_virtual_tokens >= self.config.max_position_embeddings:
            raise ValueError(f"{self.num_virtual_tokens} virtual tokens do not fit the model's "
                             f"{self.config.max_position_embeddings} positions; use fewer.")

    def extended_mask(self, input_ids: Tensor, attention_mask: Tensor | None,
                      kwargs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The mask (B, N + T) with the virtual tokens in front, and its positions, which skip
        left padding as generate() does; packed rows (position_ids) are refused."""
        if kwargs.pop("position_ids", None) is not None:
            raise ValueError("Soft prompts do not support packed rows (position_ids): train with "
                             "Formatting(pack=False).")
        kwargs.pop("use_cache", None)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = torch.cat([mask.new_ones(input_ids.shape[0], self.num_virtual_tokens), mask], dim=1)
        return mask, (mask.cumsum(dim=1) - 1).clamp(min=0)

    @torch.no_grad()
    def decode_step(self, input_ids: Tensor, attention_mask: Tensor, cache: Any = None) -> tuple[Tensor, Any]:
        """For generation with a KV cache: the next token's logits (B, V) and the cache.

        Without a cache, `input_ids` is the prompt (B, T) and the cache starts with the virtual
        tokens; with one, it is the last token (B, 1) and `attention_mask` covers every real token
        so far. Each step's positions are those the full forward pass gives the same token.
        """
        if cache is None:
            output = self._prefill(input_ids, attention_mask)
        else:
            mask, positions = self.extended_mask(input_ids, attention_mask, {})
            output = self.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions[:, -1:],
                                     cache=cache, use_cache=True)
        return output.logits[:, -1], output.cache


class PromptTuningModel(SoftPromptModel):
    """Prompt tuning: N learned input embeddings in front of every sequence's own."""

    def __init__(self, model: nn.Module, method: PromptTuning, init_ids: Tensor | None = None):
        super().__init__(model, method)
        embeddings = model.get_input_embeddings()
        self.prompt_embeddings = nn.Embedding(self.num_virtual_tokens, embeddings.embedding_dim)  # N(0, 1)
        if init_ids is not None:     # the text's own embeddings (peft's TEXT init)
            self.prompt_embeddings.weight.data.copy_(embeddings.weight[init_ids].detach().float())

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's output on [virtual tokens; input_ids], logits for input_ids only (B, T, V)."""
        output = self._run(input_ids, attention_mask, kwargs, use_cache=False)
        output.logits = output.logits[:, self.num_virtual_tokens:]      # the real tokens' logits
        return output

    def _run(self, input_ids: Tensor, attention_mask: Tensor | None, kwargs: dict[str, Any],
             **cache: Any) -> Any:
        """The base model on [virtual tokens; input_ids], with `cache` options passed on."""
        mask, positions = self.extended_mask(input_ids, attention_mask, kwargs)
        embeds = self.base_model.get_input_embeddings()(input_ids)                       # (B, T, d)
        prompt = self.prompt_embeddings.weight.to(embeds.dtype).expand(len(input_ids), -1, -1)  # (B, N, d)
        return self.base_model(inputs_embeds=torch.cat([prompt, embeds], dim=1), attention_mask=mask,
                               position_ids=positions, **cache, **kwargs)

    def _prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        from transformers import DynamicCache

        return self._run(input_ids, attention_mask, {}, cache=DynamicCache(), use_cache=True)


class PrefixTuningModel(SoftPromptModel):
    """Prefix tuning: N learned keys and values in every layer, handed over as a filled KV cache."""

    def __init__(self, model: nn.Module, method: PrefixTuning, init_ids: Tensor | None = None):
        super().__init__(model, method)
        L, H, D = kv_shape(self.config)
        width = method.projection_dim
        # Without an MLP the rows are the prefix itself, (N, L * 2 * H * D); with one (Li & Liang's
        # reparametrisation) they are one key/value-sized vector per token that the MLP expands.
        self.prompt_embeddings = nn.Embedding(self.num_virtual_tokens, H * D if width else L * 2 * H * D)
        self.prefix_mlp = None if not width else nn.Sequential(
            nn.Linear(H * D, width), nn.Tanh(), nn.Linear(width, L * 2 * H * D))
        if init_ids is not None:
            self.prompt_embeddings.weight.data.copy_(self._text_keys_values(init_ids))

    @torch.no_grad()
    def _text_keys_values(self, ids: Tensor) -> Tensor:
        # The keys and values the frozen model itself computes for the text (Li & Liang, section
        # 7.2: initialising with real words' activations), laid out as the prefix: (N, L*2*H*D).
        from transformers import DynamicCache

        cache = DynamicCache()
        self.base_model(ids[None], cache=cache, use_cache=True)
        layers = [(cache.layers[i].keys[0], cache.layers[i].values[0]) for i in range(len(cache.layers))]
        rows = torch.stack([t.transpose(0, 1) for pair in layers for t in pair], dim=1)   # (N, 2L, H, D)
        return rows.reshape(self.num_virtual_tokens, -1).float()

    def prefix_cache(self, batch_size: int) -> Any:
        """The learned keys and values as a transformers DynamicCache: per layer (B, H, N, D)."""
        from transformers import DynamicCache

        L, H, D = kv_shape(self.config)
        prefix = self.prompt_embeddings.weight
        if self.prefix_mlp is not None:
            prefix = self.prefix_mlp(prefix)
        prefix = prefix.expand(batch_size, -1, -1).reshape(batch_size, self.num_virtual_tokens, 2 * L, H, D)
        per_layer = prefix.permute(2, 0, 3, 1, 4).split(2)      # L x (2, B, H, N, D): key, value
        return DynamicCache([(kv[0], kv[1]) for kv in per_layer])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        """The base model's output on input_ids, every layer also attending to the prefix (B, T, V)."""
        if self.training and getattr(self.base_model, "is_activation_checkpointing", False):
            raise ValueError("Prefix tuning cannot train with gradient checkpointing: transformers "
                             "turns the key/value cache off under it, and the prefix lives in that "
                             "cache. Call activation_checkpointing_disable() on the base model, or "
                             "use prompt tuning.")
        mask, positions = self.extended_mask(input_ids, attention_mask, kwargs)
        return self.base_model(input_ids=input_ids, attention_mask=mask,
                               position_ids=positions[:, self.num_virtual_tokens:],
                               cache=self.prefix_cache(len(input_ids)), use_cache=True, **kwargs)

    def _prefill(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        return self(input_ids, attention_mask)      # its cache already holds the prefix


# ---------------------------------------------------------------- saving (peft's format)

def soft_prompt_state_dict(model: SoftPromptModel) -> dict[str, Tensor]:
    """What peft saves: `prompt_embeddings`, (N, d) for prompt tuning and the materialised
    (N, L * 2 * H * D) prefix for prefix tuning (so no MLP is needed to use it)."""
    rows = model.prompt_embeddings.weight
    if getattr(model, "prefix_mlp", None) is not None:
        rows = model.prefix_mlp(rows)
    return {"prompt_embeddings": rows.detach().contiguous()}


def save_soft_prompt(model: SoftPromptModel, directory: str | Path) -> Path:
    """Write adapter_model.safetensors and adapter_config.json as peft's save_pretrained does."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(soft_prompt_state_dict(model), directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    L, H, D = kv_shape(model.config)
    prompt = isinstance(model, PromptTuningModel)
    fields = {"peft_type": "PROMPT_TUNING" if prompt else "PREFIX_TUNING", "task_type": "CAUSAL_LM",
              "num_virtual_tokens": model.num_virtual_tokens, "num_transformer_submodules": 1,
              "num_layers": L, "inference_mode": True,
              "base_model_name_or_path": getattr(model.config, "_name_or_path", None) or None}
    if prompt:
        fields |= {"token_dim": model.prompt_embeddings.embedding_dim,
                   "num_attention_heads": model.config.num_attention_heads, "prompt_tuning_init": "RANDOM"}
    else:   # the cache's key/value width, as peft records it for grouped-query attention
        fields |= {"token_dim": H * D, "num_attention_heads": H, "prefix_projection": False,
                   "encoder_hidden_size": H * D}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(fields, indent=2, sort_keys=True))
    return directory


# ---------------------------------------------------------------- the bridge to peft's model

PEFT_ENCODER = "prompt_encoder.default."   # where peft keeps the virtual tokens (and the prefix MLP)


def to_peft_state(model: SoftPromptModel) -> dict[str, Tensor]:
    """Every weight of our soft-prompt model under the name peft's model for the same method
    (`get_peft_model(base, method.to_peft())`) gives it: `peft_model.load_state_dict(
    to_peft_state(ours), strict=True)` loads them all."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("base_model."):                # the frozen model: the same names in peft
            state[name] = tensor
        elif name == "prompt_embeddings.weight":
            state[PEFT_ENCODER + "embedding.weight"] = tensor
        else:                                             # prefix_mlp.<i>.* is peft's transform.<i>.*
            state[PEFT_ENCODER + "transform." + name.removeprefix("prefix_mlp.")] = tensor
    state["word_embeddings.weight"] = model.base_model.get_input_embeddings().weight   # peft's alias
    return state


def from_peft_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A peft soft-prompt model's state under our names: `ours.load_state_dict(from_peft_state(
    peft_model.state_dict()), strict=True)`."""
    ours = {}
    for name, tensor in state.items():
        if name.startswith("base_model."):
            ours[name] = tensor
        elif name == PEFT_ENCODER + "embedding.weight":
            ours["prompt_embeddings.weight"] = tensor
        elif name.startswith(PEFT_ENCODER + "transform."):
            ours["prefix_mlp." + name.removeprefix(PEFT_ENCODER + "transform.")] = tensor
    return ours                                           # peft's word_embeddings alias is dropped


__all__ = ["PrefixTuning", "PrefixTuningModel", "PromptTuning", "PromptTuningModel", "SoftPromptModel",
           "from_peft_state", "kv_shape", "save_soft_prompt", "soft_prompt_state_dict", "text_ids",
           "to_peft_state"]
