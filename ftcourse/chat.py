"""Chat formatting: instructions and multi-turn chats rendered with the tokenizer's chat template.

The template wraps each turn in role tokens and ends an assistant turn with EOS, so a fine-tuned
model learns to stop. Labels are -100 except on assistant turns: the loss falls on responses and
their EOS only (TRL's "completion-only loss"). Masking is exact because the chat up to a turn,
rendered with `add_generation_prompt=True`, is a token-for-token prefix of the chat with that turn.
Padding, packing and length limits are batching's (`ftcourse.batching`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES) + ("<|end|>",)
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

# `<bos><|user|> question<|end|><|assistant|> answer<eos>`. The space after a role token makes
# the first word tokenize as it does mid-sentence in pretraining text (" Pelmora", not "Pelmora").
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown chat role ' + message['role'] + '; use system, user or assistant.') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
# ChatML, as SmolLM2, Qwen and many others write it: what a base model without a template gets.
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def messages(instruction: str, response: str | None = None) -> list[dict[str, str]]:
    """A one-turn chat: the user's instruction and, if given, the assistant's response."""
    chat = [{"role": "user", "content": instruction}]
    if response is not None:
        chat.append({"role": "assistant", "content": response})
    return chat


def check_chat(chat: Sequence[dict[str, str]], where: str = "the chat") -> None:
    """Raise ValueError for an unknown role, a missing or empty content, or no assistant turn."""
    for index, message in enumerate(chat):
        if message.get("role") not in ROLES:
            raise ValueError(f"{where}, message {index}: unknown role {message.get('role')!r}; "
                             f"use one of {', '.join(ROLES)}.")
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            raise ValueError(f"{where}, message {index} ({message['role']}): content is empty or missing; "
                             "every turn needs text (an empty response teaches the model to say nothing).")
    if not any(message["role"] == "assistant" for message in chat):
        raise ValueError(f"{where} has no assistant turn, so there is nothing to learn from it.")
    if chat[0]["role"] == "assistant":
        raise ValueError(f"{where} opens with an assistant turn; open it with a system or user turn "
                         "(a greeting can go in a system message), as chat models are trained.")


def special_tokens(tokenizer: Any) -> set[str]:
    """The texts the tokenizer reads as special tokens. Added tokens that are not special (some
    tokenizers add runs of spaces) decode to their own text, so they are left out."""
    return set(tokenizer.all_special_tokens) | {token.content for token in
                                                tokenizer.added_tokens_decoder.values() if token.special}


def check_no_special_text(tokenizer: Any, chat: Sequence[dict[str, str]], where: str = "the chat") -> None:
    """Raise ValueError if a turn's text spells a special token, such as '<eos>' or '<|user|>'.

    The tokenizer would read it as that token: an EOS mid-answer teaches the model to stop there,
    a role token fakes a turn that is not there.
    """
    specials = special_tokens(tokenizer)
    for index, message in enumerate(chat):
        if found := sorted(token for token in specials if token in message["content"]):
            raise ValueError(f"{where}, message {index} ({message['role']}): the text contains {found[0]!r}, "
                             "which the tokenizer reads as a special token, not as text. Remove or "
                             "rewrite it in the data (e.g. '< eos >').")


def _render(tokenizer: Any, chat: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"The tokenizer ({name}) has no chat template, so chats cannot be formatted. "
                         "Use the tokenizer of an instruct model, or set one: tokenizer.chat_template "
                         "= ftcourse.chat.CHAT_TEMPLATE (its role tokens must be in the vocabulary).")
    return tokenizer.apply_chat_template(list(chat), add_generation_prompt=add_generation_prompt,
                                         return_dict=False)


def assistant_turn_end(tokenizer: Any) -> str | None:
    """The special token the chat template writes right after an assistant's text (None if none):
    what a fine-tuned model must learn to emit, and generation must stop at."""
    marker = "ftcourse-end-of-answer"
    text = tokenizer.apply_chat_template(messages("?", marker), tokenize=False)
    after = text[text.index(marker) + len(marker):]
    ends = [token for token in special_tokens(tokenizer) if after.startswith(token)]
    return max(ends, key=len, default=None)


def prompt_ids(tokenizer: Any, prompt: str | Sequence[dict[str, str]]) -> list[int]:
    """Token ids of the prompt for a generation: an instruction as a one-turn chat, or the turns of
    a chat so far, then the start of the assistant's turn."""
    chat = messages(prompt) if isinstance(prompt, str) else prompt
    return _render(tokenizer, chat, add_generation_prompt=True)


def tokenize_chat(tokenizer: Any, chat: Sequence[dict[str, str]], *, mask_prompt: bool = True,
                  learn_eos: bool = True) -> dict[str, list[int]]:
    """`input_ids` of a whole chat and `labels` equal to them on assistant turns, -100 elsewhere.

    Args:
        mask_prompt: False labels every token (the loss then also falls on the questions).
        learn_eos: False masks each EOS label, as a collator does when pad == eos: the model
            never sees the end of a response as something to predict, so it never learns to stop.
    """
    check_chat(chat)
    check_no_special_text(tokenizer, chat)
    input_ids = _render(tokenizer, chat)
    labels = list(input_ids) if not mask_prompt else [-100] * len(input_ids)
    for turn, message in enumerate(chat):
        if message["role"] != "assistant" or not mask_prompt:
            continue
        before = _render(tokenizer, chat[:turn], add_generation_prompt=True)
        through = _render(tokenizer, chat[:turn + 1])
        if input_ids[:len(before)] != before or input_ids[:len(through)] != through:
            raise ValueError("The chat template renders a turn differently inside the whole chat, so "
                             "responses cannot be located for label masking.")
        labels[len(before):len(through)] = input_ids[len(before):len(through)]
    if mask_prompt:
        labels[0] = -100   # nothing precedes the first token, so it is never predicted
    if not learn_eos:
        labels = [-100 if t == tokenizer.eos_token_id else t for t in labels]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_example(tokenizer: Any, instruction: str, response: str,
                     **options: bool) -> dict[str, list[int]]:
    """One instruction/response pair as `tokenize_chat` does it (options: mask_prompt, learn_eos)."""
    return tokenize_chat(tokenizer, messages(instruction, response), **options)


def tokenize_pair(tokenizer: Any, prompt: str, chosen: str, rejected: str) -> dict[str, list[int]]:
    """A preference pair as two chats sharing the prompt: `chosen_*` and `rejected_*` input ids and
    labels (the answer and its EOS), the layout reward models and DPO train on."""
    if chosen.strip() == rejected.strip():
        raise ValueError(f"Preference pair for prompt {prompt[:60]!r}: chosen and rejected are the same "
                         f"answer ({chosen[:60]!r}), so there is no preference to learn; drop the pair.")
    pair = {}
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        example = tokenize_example(tokenizer, prompt, answer)
        pair[f"{side}_input_ids"], pair[f"{side}_labels"] = example["input_ids"], example["labels"]
    return pair
