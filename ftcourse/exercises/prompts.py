"""Exercises on soft prompts (chapter 07_soft_prompts): prepending a prompt, counting, prefix layout;
predicting what a prompt started from text computes; an open experiment on how far training moves it.

Each check compares the learner's function with `ftcourse.prompts`' soft-prompt models on a tiny
random Llama: what it feeds the frozen model, how many parameters it trains, the keys and values
of its prefix cache. Common mistakes are named in the message.
Shapes: B batch, T real tokens, N virtual tokens, d hidden size, L layers, H key/value heads, D head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ftcourse.exercises.core import ExerciseFailed, exercise, expect_close, expect_number
from ftcourse.exercises.kinds import Choice, Field, experiment, one_value_per, predict
from ftcourse.prompts import PrefixTuning, PromptTuning, SoftPromptModel


def prepend_soft_prompt(embeds: Tensor, attention_mask: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor]:
    """Put the N prompt rows in front of every sequence's embeddings (B, T, d) -> (B, N + T, d),
    and extend the mask with ones so that every real token can attend to the virtual ones."""
    batch_size, num_virtual_tokens = embeds.shape[0], prompt.shape[0]
    prompt_rows = prompt.expand(batch_size, -1, -1)            # the same prompt for each sequence
    prompt_mask = attention_mask.new_ones(batch_size, num_virtual_tokens)
    return torch.cat([prompt_rows, embeds], dim=1), torch.cat([prompt_mask, attention_mask], dim=1)


def soft_prompt_parameter_counts(config: dict, num_virtual_tokens: int) -> tuple[int, int]:
    """Trainable parameters of (prompt tuning, prefix tuning) with N virtual tokens: one input
    embedding per token, against a key and a value per token in every layer."""
    hidden_size = config["hidden_size"]
    head_dim = hidden_size // config["num_attention_heads"]
    key_value_width = config["num_key_value_heads"] * head_dim    # grouped-query: fewer k/v heads
    prompt_tuning = num_virtual_tokens * hidden_size
    prefix_tuning = num_virtual_tokens * config["num_hidden_layers"] * 2 * key_value_width
    return prompt_tuning, prefix_tuning


def prefix_to_key_values(prefix: Tensor, num_layers: int, num_heads: int, head_dim: int,
                         batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Cut the learned prefix (N, L * 2 * H * D) into each layer's (key, value), (B, H, N, D) each:
    the KV cache that makes every layer attend to N learned positions."""
    num_virtual_tokens = prefix.shape[0]
    rows = prefix.view(num_virtual_tokens, num_layers, 2, num_heads, head_dim)   # per layer: key, value
    per_layer = rows.permute(1, 2, 3, 0, 4)                                   # (L, 2, H, N, D)
    return [(keys.expand(batch_size, -1, -1, -1), values.expand(batch_size, -1, -1, -1))
            for keys, values in per_layer]


# ---------------------------------------------------------------- hidden tests

def _tiny_llama(hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int) -> nn.Module:
    # A random Llama to wrap; fork_rng keeps the learner's random state as it was.
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=hidden_size, intermediate_size=16,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def _what_the_base_model_reads(soft: SoftPromptModel, input_ids: Tensor, mask: Tensor) -> dict[str, Any]:
    # The keyword arguments SoftPromptModel passes to the frozen model, caught by a hook.
    seen: dict[str, Any] = {}
    hook = soft.base_model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs),
                                                     with_kwargs=True)
    with torch.no_grad():
        soft(input_ids, mask)
    hook.remove()
    return seen


@exercise(chapter="07_soft_prompts", solution=prepend_soft_prompt,
          task="Prepend a soft prompt (N, d) to a batch of input embeddings (B, T, d) and extend "
               "the attention mask (B, T) to match.")
def check_prepend_soft_prompt(answer: Callable) -> None:
    """Compare with what `SoftPromptModel` (prompt tuning) feeds its frozen model, on a left-padded batch."""
    model = _tiny_llama(hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2)
    soft = PromptTuning(num_virtual_tokens=3).apply(model)
    generator = torch.Generator().manual_seed(7)
    prompt = torch.randn(3, 8, generator=generator)
    soft.prompt_embeddings.weight.data.copy_(prompt)
    input_ids = torch.randint(0, 32, (2, 5), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])          # the second row is left-padded
    embeds = model.get_input_embeddings()(input_ids).detach()
    want = _what_the_base_model_reads(soft, input_ids, mask)
    got = answer(embeds.clone(), mask.clone(), prompt.clone())
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise ExerciseFailed("prepend_soft_prompt: return a pair (embeddings, attention_mask), "
                             f"got {type(got).__name__}.")
    what = "prepend_soft_prompt with B=2, T=5, N=3, d=8"
    expect_close(got[0], want["inputs_embeds"], f"{what}, the embeddings", atol=0, hints={
        "put the prompt after the input's embeddings; the virtual tokens come first.":
            torch.cat([embeds, prompt.expand(2, -1, -1)], dim=1)})
    ones, zeros = torch.ones(2, 3, dtype=mask.dtype), torch.zeros(2, 3, dtype=mask.dtype)
    expect_close(got[1], want["attention_mask"], f"{what}, the attention mask", atol=0, hints={
        "left the mask as it was; it needs N more entries, ones for the virtual tokens.": mask,
        "appended the ones at the end; the virtual tokens come first, so do their mask entries.":
            torch.cat([mask, ones], dim=1),
        "made the whole mask ones; keep the input's zeros (left padding): only the virtual tokens "
        "are new ones.": torch.ones(2, 8, dtype=mask.dtype),
        "gave the virtual tokens mask 0; the real tokens must attend to them (1).":
            torch.cat([zeros, mask], dim=1),
    })


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@exercise(chapter="07_soft_prompts", solution=soft_prompt_parameter_counts,
          task="Count the trainable parameters of prompt tuning and of prefix tuning with N virtual "
               "tokens, from a model's config.")
def check_soft_prompt_parameter_counts(answer: Callable) -> None:
    """Compare with `SoftPromptModel`'s trainable parameters on a grouped-query and a plain model."""
    for sizes, n in [(dict(hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2), 5),
                     (dict(hidden_size=24, num_layers=2, num_heads=3, num_kv_heads=3), 7)]:
        config = {"hidden_size": sizes["hidden_size"], "num_hidden_layers": sizes["num_layers"],
                  "num_attention_heads": sizes["num_heads"], "num_key_value_heads": sizes["num_kv_heads"]}
        with torch.device("meta"):   # only the shapes matter: no memory, no random numbers
            model = _tiny_llama(**sizes)
            prompt = _trainable(PromptTuning(num_virtual_tokens=n).apply(model))
            prefix = _trainable(PrefixTuning(num_virtual_tokens=n).apply(model))
        got = answer(config, n)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise ExerciseFailed("soft_prompt_parameter_counts: return a pair (prompt tuning, prefix "
                                 f"tuning), got {type(got).__name__}.")
        d, L = sizes["hidden_size"], sizes["num_layers"]
        key_value_width = sizes["num_kv_heads"] * d // sizes["num_heads"]
        what = f"soft_prompt_parameter_counts with N={n} on {config}"
        expect_number(got[0], prompt, f"{what}, prompt tuning", rel=0, hints={
            "counted the prompt once per layer; prompt tuning only adds N rows to the input "
            "embeddings.": n * d * L})
        expect_number(got[1], prefix, f"{what}, prefix tuning", rel=0, hints={
            "used all attention heads for keys and values; with grouped-query attention they have "
            "num_key_value_heads heads.": n * L * 2 * d,
            "left out the factor 2: every layer gets N keys and N values.": n * L * key_value_width,
            "left out the layers: every layer has its own keys and values.": n * 2 * key_value_width,
            "counted the prefix like a prompt (N x hidden_size); prefix tuning learns keys and values "
            "for every layer.": n * d})


@exercise(chapter="07_soft_prompts", solution=prefix_to_key_values,
          task="Cut a learned prefix (N, L * 2 * H * D) into each layer's key and value, "
               "(B, H, N, D) each.")
def check_prefix_to_key_values(answer: Callable) -> None:
    """Compare with the DynamicCache that `PrefixTuningModel.prefix_cache` builds for the frozen model."""
    for n, L, H, D, B in [(5, 3, 2, 4, 2), (3, 2, 4, 2, 1)]:
        with torch.device("meta"):
            soft = PrefixTuning(num_virtual_tokens=n).apply(
                _tiny_llama(hidden_size=H * D, num_layers=L, num_heads=H, num_kv_heads=H))
        prefix = torch.randn(n, L * 2 * H * D, generator=torch.Generator().manual_seed(n))
        soft.prompt_embeddings.weight = nn.Parameter(prefix)
        cache = soft.prefix_cache(B)
        what = f"prefix_to_key_values with N={n}, L={L}, H={H}, D={D}, B={B}"
        got = answer(prefix.clone(), L, H, D, B)
        if not (isinstance(got, (list, tuple)) and len(got) == L and all(len(pair) == 2 for pair in got)):
            raise ExerciseFailed(f"{what}: return a list of L={L} pairs (key, value), one per layer.")
        values_first = prefix.view(n, 2, L, H, D).permute(2, 1, 3, 0, 4)     # (L, 2, H, N, D)
        per_layer = prefix.view(n, L, 2, H, D)
        for layer, pair in enumerate(got):
            for index, part in enumerate(("key", "value")):
                rows = per_layer[:, layer, index]                              # (N, H, D)
                hints = {
                    "read the row as all keys, then all values (N, 2, L, H, D); it is laid out layer by "
                    "layer, each a key then a value: (N, L, 2, H, D).":
                        values_first[layer, index].expand(B, -1, -1, -1),
                    "swapped keys and values: in each layer's pair the key comes first.":
                        per_layer[:, layer, 1 - index].transpose(0, 1).expand(B, -1, -1, -1),
                    "left the virtual tokens before the heads; attention wants (B, H, N, D), heads first.":
                        rows.expand(B, -1, -1, -1),
                    "forgot the batch dimension: expand to (batch_size, H, N, D), the same prefix for "
                    "every sequence.": rows.transpose(0, 1),
                }
                expect_close(pair[index], getattr(cache.layers[layer], part + "s"),
                             f"{what}, layer {layer}'s {part}", atol=0, hints=hints)


# ---------------------------------------------------------------- predict, then run; an open experiment

# The largest change relative to the largest logit: rounding (float32 or bfloat16) stays far below 1%.
SAME_LOGITS = 0.01

predict("soft_prompt_text_init", chapter="07_soft_prompts",
        question="Prompt tuning starts its virtual tokens from a text (init_text), untrained. Are its logits "
                 "for a message 'the same' as the frozen model's when it reads that text as ordinary tokens "
                 "before the message, or 'different'?",
        form=Choice(("the same", "different"),
                    right=lambda change: "the same" if change < SAME_LOGITS else "different"))


def _shares_of_whole_tokens(finding: dict) -> str | None:
    # A share of N virtual tokens is (tokens still nearest their start) / N; 2-decimal rounding is forgiven.
    tokens = finding["virtual_tokens"]
    odd = [share for share in finding["still_nearest"]
           if abs(share * tokens - round(share * tokens)) > 0.005 * tokens]
    return (f"still_nearest {odd} cannot be shares of {tokens} virtual tokens: give each as (virtual tokens "
            "whose nearest token embedding is their starting token) / virtual_tokens") if odd else None


experiment("soft_prompt_drift", chapter="07_soft_prompts",
           question="Does a trained soft prompt still read as words? Train prompt tuning from a text "
                    "start on routing for the same number of steps at two learning rates or more, measure "
                    "the share of virtual tokens whose nearest token embedding is still the token they "
                    "started from, and say what the learning rate does to the prompt and whether you could "
                    "read a trained prompt back as text.",
           fields={"virtual_tokens": Field(int, low=1), "steps": Field(int, low=1),
                   "learning_rates": Field(list, item=float, low=0, min_len=2),
                   "still_nearest": Field(list, item=float, low=0, high=1, min_len=2),
                   "conclusion": Field(str, min_len=40)},
           checks=(one_value_per("learning_rates", ["still_nearest"], "learning rate", "learning rates"),
                   _shares_of_whole_tokens))
