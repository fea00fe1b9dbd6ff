"""GGUF for llama.cpp: a merged Llama-family model, or a LoRA adapter, as one file, read back
through llama.cpp itself (llama-cpp-python) to prove the file right.

A GGUF file holds the tensors under llama.cpp's names and key-value metadata: the shapes of the
network, the tokenizer (tokens, merges, pre-tokenizer, special ids) and the chat template. Two
things differ from the Hugging Face layout, as in llama.cpp's own convert_hf_to_gguf.py:
- q_proj and k_proj rows are permuted. transformers' Llama rotates the two halves of each head
  (rotate_half); llama.cpp's llama architecture rotates adjacent pairs. Permuting the rows makes
  the two the same computation. A LoRA adapter's B of q and k is permuted the same way (A is not).
- llama.cpp knows a BPE pre-tokenizer by a name, `tokenizer.ggml.pre`. Its converter finds the
  name by hashing the tokens of a test text and refuses a tokenizer it has never seen, such as
  ours. Ours is byte-level BPE with GPT-2's split regex, so it is registered as "gpt-2", and a test
  checks that llama.cpp tokenizes text to the same ids as transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ftcourse.batching import token_logprobs
from ftcourse.lora import lora_layers

# file type -> (the type of each matrix, the type of the embedding, llama.cpp's file-type number).
# Norms and other vectors stay F32 in every file. In the 4-bit file the embedding, which is also the
# output layer when they are tied, keeps 8 bits, as llama.cpp's llama-quantize keeps its output layer.
FILE_TYPES = {"F32": ("F32", "F32", 0), "F16": ("F16", "F16", 1),
              "Q8_0": ("Q8_0", "Q8_0", 7), "Q4_0": ("Q4_0", "Q8_0", 2)}

# transformers' Llama module names -> llama.cpp's, per block and outside the blocks.
BLOCK_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


def gguf_name(module: str) -> str:
    """llama.cpp's name for a transformers Llama module: model.layers.3.mlp.up_proj -> blk.3.ffn_up."""
    if module in TOP_NAMES:
        return TOP_NAMES[module]
    if (found := re.fullmatch(r"model\.layers\.(\d+)\.(.+)", module)) and found[2] in BLOCK_NAMES:
        return f"blk.{found[1]}.{BLOCK_NAMES[found[2]]}"
    raise ValueError(f"No GGUF name for module {module!r}: only Llama-family models (LlamaForCausalLM, "
                     "its names and shapes) export to GGUF here.")


def rope_permute(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half order (transformers) to adjacent pairs (llama.cpp)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2) \
        .reshape(rows.shape)


def _heads_for(module: str, config: Any) -> int | None:
    if module.endswith("q_proj"):
        return config.num_attention_heads
    if module.endswith("k_proj"):
        return config.num_key_value_heads
    return None


def _check_llama(model: nn.Module) -> Any:
    config = model.config
    if config.model_type not in ("llama", "mistral"):
        raise ValueError(f"GGUF export handles Llama-family models; this is {config.model_type!r}. "
                         "Use llama.cpp's convert_hf_to_gguf.py on the merged folder instead.")
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default"}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not exported here; use llama.cpp's "
                         "convert_hf_to_gguf.py on the merged folder.")
    return config


def model_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor) for each weight of a plain Llama model, q and k permuted."""
    config = _check_llama(model)
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        module = name.removesuffix(".weight")
        if module == "lm_head" and tied:
            continue
        tensor = tensor.detach().float().cpu()
        if (heads := _heads_for(module, config)) is not None:
            tensor = rope_permute(tensor, heads)
        yield f"{gguf_name(module)}.weight", tensor


def _quantized(gguf: Any, array: np.ndarray, kind: str) -> tuple[np.ndarray, Any]:
    qtype = gguf.GGMLQuantizationType[kind]
    if array.ndim == 1 or kind == "F32":
        return array, gguf.GGMLQuantizationType.F32
    if kind == "F16":
        return array.astype(np.float16), qtype
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:          # rows that do not split into blocks stay in F16, as llama.cpp's
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16   # converter does
    return gguf.quants.quantize(array, qtype), qtype


def write_gguf(model: nn.Module, tokenizer: Any, path: str | Path, file_type: str = "F32",
               name: str = "ftcourse") -> Path:
    """Write a plain (merged) Llama model and its tokenizer as one GGUF file of `file_type`
    (F32, F16, Q8_0, or Q4_0). LoRA layers must be merged first: `export.merged_copy(model)`."""
    import gguf

    if file_type not in FILE_TYPES:
        raise ValueError(f"Unknown GGUF file type {file_type!r}; use one of {', '.join(FILE_TYPES)}.")
    if lora_layers(model):
        raise ValueError("The model has LoRA layers; merge them first (ftcourse.export.merged_copy), or "
                         "write the adapter on its own with write_lora_gguf.")
    config = _check_llama(model)
    matrix_type, embedding_type, file_number = FILE_TYPES[file_type]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type(file_number)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((getattr(config, "rope_parameters", None) or {}).get(
        "rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    add_tokenizer(writer, tokenizer, config.vocab_size)
    for tensor_name, tensor in model_tensors(model):
        kind = embedding_type if tensor_name == "token_embd.weight" else matrix_type
        data, qtype = _quantized(gguf, tensor.numpy(), kind)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    _finish(writer)
    return path


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: byte-level BPE ("gpt2") tokens, types, merges, special
    ids, whether a BOS starts each text, and the chat template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = backend.get("pre_tokenizer") or {}
    if backend["model"]["type"] != "BPE" or not _gpt2_pre_tokenizer(pre):
        raise ValueError("Only byte-level BPE tokenizers with GPT-2's split regex are registered here "
                         f"(this one: {backend['model']['type']}, pre-tokenizer {pre.get('type')!r}); use "
                         "llama.cpp's convert_hf_to_gguf.py, which knows many more by their hash.")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = {added.content for added in tokenizer.added_tokens_decoder.values() if added.special}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        tokens.append(token if token is not None else f"[PAD{index}]")
        types.append(TOKEN_UNUSED if token is None else TOKEN_CONTROL if token in special else TOKEN_NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    starts_with_bos = tokenizer.bos_token_id is not None and \
        tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    writer.add_add_bos_token(starts_with_bos)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _gpt2_pre_tokenizer(pre: dict) -> bool:
    # ByteLevel with its regex on, alone or as the only step of a Sequence.
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True)


def write_lora_gguf(model: nn.Module, path: str | Path, name: str = "ftcourse adapter") -> Path:
    """Write the LoRA layers of `model` as a llama.cpp adapter (general.type "adapter"): A and B of
    each layer under its module's GGUF name, and alpha so that llama.cpp's alpha / r is our scaling."""
    import gguf

    layers = lora_layers(model)
    if not layers:
        raise ValueError("The model has no LoRA layers to write; train or load_adapter one first.")
    config = _check_llama(model)
    if len({layer.scaling * layer.r for layer in layers.values()}) != 1:
        raise ValueError("The LoRA layers have different alpha; llama.cpp keeps one alpha per adapter.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    layer = next(iter(layers.values()))
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(layer.scaling * layer.r))
    writer.add_name(name)
    for module, layer in layers.items():
        a = layer.lora_A.weight.detach().float().cpu()           # (r, d_in)
        b = layer.lora_B.weight.detach().float().cpu()           # (d_out, r)
        if (heads := _heads_for(module, config)) is not None:
            b = rope_permute(b, heads)
        writer.add_tensor(f"{gguf_name(module)}.weight.lora_a", a.numpy())
        writer.add_tensor(f"{gguf_name(module)}.weight.lora_b", b.numpy())
    _finish(writer)
    return path


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------- reading back through llama.cpp

def load_gguf(path: str | Path, *, lora: str | Path | None = None, n_ctx: int | None = None,
              threads: int | None = None) -> Any:
    """A `llama_cpp.Llama` on the file (and adapter), keeping every position's logits, quiet.

    Its attention cache is float32 (llama.cpp's default is float16, which would round the keys and
    values of an F32 file and make its logits differ from transformers' by more than rounding).
    It computes with torch's thread count (at most 4), for one token and for a whole sequence alike:
    one under OMP_NUM_THREADS=1, where another process holds the other core and two llama.cpp
    threads would wait for each other (chapter 10 beside chapter 4: 0.6 s with one, 18 s with two).
    """
    from llama_cpp import GGML_TYPE_F32, Llama

    threads = threads or min(4, torch.get_num_threads())
    return Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=n_ctx or 0,
                 logits_all=True, verbose=False, seed=0, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                 n_threads=threads, n_threads_batch=threads)


def llama_logits(llm: Any, ids: Sequence[int]) -> np.ndarray:
    """llama.cpp's next-token logits at every position of `ids`: shape (len(ids), vocab)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def llama_greedy(llm: Any, ids: Sequence[int], max_new_tokens: int, eos_id: int | None) -> list[int]:
    """Greedy continuation of `ids` by llama.cpp, up to and including the first EOS."""
    llm.reset()
    llm.eval(list(ids))
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        new.append(token)
        if token == eos_id:
            break
        llm.eval([token])
    return new


def llama_mean_loss(llm: Any, examples: Sequence[dict[str, list[int]]]) -> float:
    """llama.cpp's mean next-token loss over the labelled tokens of tokenized examples (labels -100
    elsewhere): what `evaluate.perplexity` takes the exponential of for a transformers model."""
    total, count = 0.0, 0
    for example in examples:
        logits = torch.from_numpy(llama_logits(llm, example["input_ids"]))[None]
        labels = torch.tensor([example["labels"]])
        total -= token_logprobs(logits, labels).sum().item()
        count += int((labels[:, 1:] != -100).sum())
    return total / count


def llama_mean_kl(llm: Any, examples: Sequence[dict[str, list[int]]], reference: nn.Module) -> float:
    """Mean KL(reference || llama.cpp) per labelled token: how far a file's next-token distributions
    moved from the model it was written from. Unlike the held-out loss it cannot fall by chance: any
    rounding raises it from 0 (llama-perplexity's --kl-divergence, on the answers only)."""
    device = next(reference.parameters()).device
    total, count = 0.0, 0
    for example in examples:
        ids = example["input_ids"]
        ours = torch.log_softmax(torch.from_numpy(llama_logits(llm, ids)), dim=-1)
        with torch.no_grad():
            logits = reference(torch.tensor([ids], device=device)).logits[0]
        theirs = torch.log_softmax(logits.float().cpu(), dim=-1)
        answer = torch.tensor(example["labels"][1:]) != -100          # positions that predict a label
        kl = (theirs.exp() * (theirs - ours)).sum(dim=-1)[:-1][answer]
        total += kl.sum().item()
        count += int(answer.sum())
    return total / count


def llama_tokenize(llm: Any, text: str, add_bos: bool = True) -> list[int]:
    """llama.cpp's token ids for `text`, special tokens parsed; with `add_bos`, a BOS first if the
    file says its tokenizer adds one (as transformers' `tokenizer(text)` does)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


__all__ = ["FILE_TYPES", "gguf_name", "llama_greedy", "llama_logits", "llama_mean_kl", "llama_mean_loss",
           "llama_tokenize", "load_gguf", "model_tensors", "rope_permute", "write_gguf", "write_lora_gguf"]
