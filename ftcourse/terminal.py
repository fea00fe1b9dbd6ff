"""Talking to a model in the terminal (`ftcourse chat`): a conversation in the model's chat
template, each answer streamed token by token as it is generated.

The model sees the whole conversation so far. When it no longer fits the model's positions, the
oldest exchanges are dropped, with a note saying so. Ctrl-D (end of input) or Ctrl-C ends the chat
cleanly, also in the middle of an answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ftcourse.batching import model_device
from ftcourse.chat import prompt_ids


def converse(model: Any, tokenizer: Any, read: Callable[[], str], write: Callable[[str], None], *,
             system: str | None = None, max_new_tokens: int = 128) -> int:
    """Answer each line `read` returns, greedily, writing the answer as it is generated, until
    `read` raises EOFError (Ctrl-D) or either raises KeyboardInterrupt (Ctrl-C). Returns the
    number of answers given."""
    chat = [{"role": "system", "content": system}] if system else []
    answered, limit = 0, positions(model)
    while True:
        try:
            line = read().strip()
            if not line:
                continue
            chat.append({"role": "user", "content": line})
            dropped = fit_chat(tokenizer, chat, limit - max_new_tokens)
            if dropped:
                write(f"(the oldest {dropped} turn(s) no longer fit the model's {limit} positions and were "
                      "dropped)\n")
            if not any(turn["role"] == "user" for turn in chat):
                write("(that message alone is longer than the model can read; say something shorter)\n")
                continue
            write("model> ")
            answer = stream_answer(model, tokenizer, chat, write, max_new_tokens)
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return answered
        chat.append({"role": "assistant", "content": answer})
        answered += 1


def positions(model: Any) -> int:
    """How many tokens the model can read and write in one sequence."""
    return getattr(model.config, "max_position_embeddings", None) or 2048


def fit_chat(tokenizer: Any, chat: list[dict[str, str]], budget: int) -> int:
    """Drop the oldest turns after any system message, in place, until the chat's prompt takes at
    most `budget` tokens; return how many were dropped."""
    first = 1 if chat and chat[0]["role"] == "system" else 0
    dropped = 0
    while len(chat) > first and len(prompt_ids(tokenizer, chat)) > budget:
        del chat[first]
        dropped += 1
    while len(chat) > first and chat[first]["role"] != "user":   # a chat restarts with the user
        del chat[first]
        dropped += 1
    return dropped


def stream_answer(model: Any, tokenizer: Any, chat: list[dict[str, str]], write: Callable[[str], None],
                  max_new_tokens: int) -> str:
    """The greedy answer to `chat`, written piece by piece as the tokens come."""
    from transformers import TextStreamer

    class Writer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            write(text + ("\n" if stream_end else ""))

    ids = torch.tensor([prompt_ids(tokenizer, chat)], device=model_device(model))
    streamer = Writer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, streamer=streamer, top_k=None,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
