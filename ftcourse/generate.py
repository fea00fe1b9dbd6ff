"""Batched generation with left padding: greedy or sampled, from chat prompts or plain text.

Prompts of different lengths are padded on the left so that every row's last prompt token sits
in the same column and new tokens are appended after it; the attention mask hides the padding
and positions count from each row's first real token, so a row's output does not depend on the
rows beside it (tested: batched greedy output equals one-at-a-time output).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ftcourse.batching import batches, evaluating, model_device
from ftcourse.chat import prompt_ids


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask`, each (B, T), with padding on the left."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            input_ids[row, length - len(seq):] = torch.as_tensor(seq)
            attention_mask[row, length - len(seq):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generate_ids(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, batch_size: int = 64) -> list[list[int]]:
    """New token ids for each tokenized prompt, up to and including the first EOS.

    Args:
        do_sample: False for greedy decoding; True samples with `temperature` and `top_p`,
            reproducibly for a given `seed`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    virtual = getattr(model, "num_virtual_tokens", 0)      # a soft prompt takes positions of its own
    if positions is not None and (too_long := [i for i, ids in enumerate(prompts)
                                               if virtual + len(ids) + max_new_tokens > positions]):
        raise ValueError(f"{len(too_long)} prompt(s) (first: index {too_long[0]}) plus "
                         f"max_new_tokens={max_new_tokens} exceed the model's {positions} positions"
                         + (f" (less its {virtual} virtual tokens)" if virtual else "")
                         + "; shorten the prompts or lower max_new_tokens.")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (outside := [(i, t) for i, ids in enumerate(prompts) for t in ids
                                          if not 0 <= t < vocab]):
        raise ValueError(f"{len(outside)} token id(s) are outside the model's vocabulary of {vocab} "
                         f"(first: {outside[0][1]} in prompt {outside[0][0]}); the prompts were encoded "
                         "with another tokenizer. Encode them with this model's tokenizer.")
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else \
        {"do_sample": False}
    from transformers import GenerationMixin  # here, not above: `import transformers` takes seconds

    decode = model.generate if isinstance(model, GenerationMixin) else partial(decode_loop, model)
    device = model_device(model)
    collate = partial(left_pad, pad_id=tokenizer.pad_token_id)
    completions: list[list[int]] = []
    with evaluating(model):
        starts = range(0, len(prompts), batch_size)
        for start, batch in zip(starts, batches(model, prompts, batch_size, collate)):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + start)  # seeds the CPU and CUDA generators
                output = decode(**batch, max_new_tokens=max_new_tokens, top_k=None,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                **sampling)
            for row in output[:, batch["input_ids"].shape[1]:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[:row.index(tokenizer.eos_token_id) + 1]
                completions.append(row)
    return completions


def decode_loop(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                max_new_tokens: int, eos_token_id: int, pad_token_id: int, do_sample: bool = False,
                temperature: float = 1.0, top_p: float = 1.0, **_: Any) -> torch.Tensor:
    """Prompt plus up to `max_new_tokens` new tokens (B, T + new), as `model.generate` returns, for
    a model without transformers' `generate`. A soft-prompt wrapper reads the prompt behind its
    virtual tokens once, then one token at a time against its KV cache (`decode_step`); any other
    module runs a full forward pass over the text so far at every step. Finished rows get padding.
    """
    mask = attention_mask
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    cache = None
    for _ in range(max_new_tokens):
        if hasattr(model, "decode_step"):
            logits, cache = model.decode_step(input_ids if cache is None else input_ids[:, -1:], mask, cache)
        else:
            logits = model(input_ids, mask).logits[:, -1]                # the next token's (B, V)
        next_token = torch.where(done, pad_token_id, pick(logits.float(), do_sample, temperature, top_p))
        input_ids = torch.cat([input_ids, next_token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        done |= next_token == eos_token_id
        if done.all():
            break
    return input_ids


def pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """The next token per row (B,): the argmax, or a sample from the smallest set of tokens whose
    probability reaches `top_p` (nucleus sampling), at `temperature`."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p      # beyond the nucleus
    sorted_probs = sorted_probs.masked_fill(outside, 0)
    return order.gather(-1, torch.multinomial(sorted_probs, 1)).squeeze(-1)


def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, chat: bool = True,
             **options: Any) -> list[str]:
    """Continue each prompt; return the new text only, cut at EOS, without special tokens.

    Args:
        prompts: instructions or chats so far (chat=True: formatted with the chat template), or
            raw text (chat=False).
        options: max_new_tokens, do_sample, temperature, top_p, seed, batch_size (`generate_ids`).
    """
    encoded = [prompt_ids(tokenizer, p) if chat else tokenizer(p)["input_ids"] for p in prompts]
    return [tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in generate_ids(model, tokenizer, encoded, **options)]
