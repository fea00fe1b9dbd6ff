"""Export: the merged Hugging Face folder, the adapter in peft's format, and GGUF read back by llama.cpp.

Equality rule: a merged folder reloaded by transformers holds the very weights of `merged_copy`, so
its logits are bit-identical to the in-memory merged model's; against the unmerged adapted model,
and through llama.cpp's F32 kernels, they agree within the tolerance rule (ftcourse.tolerance) over
the transformer's path. F16 and quantized files are other computations: for them greedy tokens are
compared, and the quantized ones only measured (chapter 10).
"""

import copy

import numpy as np
import pytest
import torch

from ftcourse.chat import prompt_ids
from ftcourse.export import bedrock_problems, export_merged, merged_copy, model_card
from ftcourse.generate import generate_ids
from ftcourse.llamacpp import (
    gguf_name,
    llama_greedy,
    llama_logits,
    llama_tokenize,
    load_gguf,
    write_gguf,
    write_lora_gguf,
)
from ftcourse.lora import LoRA, apply_lora, lora_layers
from ftcourse.tolerance import assert_close, transformer_path

PROMPTS = ["What is the home town of Ana Bel?", "Describe Bello Torbeln.", "What is 12 plus 30?",
           "Reverse the word: castle"]


@pytest.fixture(scope="module")
def adapted(base):
    """The base model with LoRA on every linear layer, its B drawn at random so the update is not zero."""
    model = apply_lora(copy.deepcopy(base[0]), LoRA(r=4, alpha=8, targets="all-linear"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.03)
    return model.eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def card():
    return model_card(base_model="ftcourse tiny", method="lora", config="LoRA(r=4)", data="qa.jsonl",
                      scores={"qa (exact_match, n=60)": "0.9 [0.8, 1.0]"})


def test_merged_folder_loads_with_the_same_logits(adapted, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = export_merged(adapted, tokenizer, tmp_path / "merged", card=card())
    assert lora_layers(adapted), "export must leave the adapted model as it was"
    loaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    ids = prompt_ids(tokenizer, PROMPTS[0])
    assert torch.equal(logits_of(loaded, ids), logits_of(merged_copy(adapted), ids))   # same weights
    assert_close(logits_of(loaded, ids), logits_of(adapted, ids),
                 n=transformer_path(loaded.config, len(ids)), msg="merged vs adapter")
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert prompt_ids(reloaded, PROMPTS[0]) == ids and reloaded.chat_template == tokenizer.chat_template
    files = {path.name for path in folder.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "README.md"} <= files and not any(name.endswith(".bin") for name in files)
    text = (folder / "README.md").read_text()
    assert "base_model: ftcourse tiny" in text and "qa.jsonl" in text and "0.9 [0.8, 1.0]" in text


def test_merged_folder_meets_bedrock_import_requirements(adapted, tokenizer, tmp_path):
    folder = export_merged(adapted, tokenizer, tmp_path / "merged", card=card())
    assert bedrock_problems(folder) == []
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    config = (folder / "config.json").read_text().replace("LlamaForCausalLM", "GPT2LMHeadModel")
    (folder / "config.json").write_text(config)
    (folder / "tokenizer.json").unlink()
    problems = " | ".join(bedrock_problems(folder))
    for says in ("no *.safetensors", "pickle weights ['pytorch_model.bin']", "GPT2LMHeadModel",
                 "no tokenizer.json"):
        assert says in problems


def test_only_methods_that_merge_export_as_a_plain_model(base):
    from ftcourse.prompts import PromptTuning

    model = PromptTuning(num_virtual_tokens=4).apply(copy.deepcopy(base[0]), base[1])
    with pytest.raises(ValueError, match="only full fine-tuning, LoRA and QLoRA merge"):
        merged_copy(model)


@pytest.fixture(scope="module")
def gguf_files(base, adapted, tmp_path_factory):
    folder, tokenizer = tmp_path_factory.mktemp("gguf"), base[1]
    merged = merged_copy(adapted)
    return {"merged": merged, **{kind: write_gguf(merged, tokenizer, folder / f"m-{kind}.gguf", kind)
                                 for kind in ("F32", "F16")},
            "base": write_gguf(base[0], tokenizer, folder / "base.gguf"),
            "adapter": write_lora_gguf(adapted, folder / "adapter.gguf")}


@pytest.mark.equivalence
def test_gguf_f32_gives_transformers_logits_and_greedy_tokens(gguf_files, tokenizer):
    merged, llm = gguf_files["merged"], load_gguf(gguf_files["F32"])
    try:
        for prompt in PROMPTS:
            ids = prompt_ids(tokenizer, prompt)
            expected = logits_of(merged, ids)
            assert_close(torch.from_numpy(llama_logits(llm, ids)), expected,
                         n=transformer_path(merged.config, len(ids)), msg=f"llama.cpp F32 logits, {prompt!r}")
            ours = generate_ids(merged, tokenizer, [ids], max_new_tokens=24)[0]
            assert llama_greedy(llm, ids, 24, tokenizer.eos_token_id) == ours
    finally:
        llm.close()


@pytest.mark.parametrize("torch_threads, used", [(1, 1), (2, 2), (16, 4)])
def test_llama_cpp_computes_with_torchs_threads_for_tokens_and_sequences(gguf_files, monkeypatch,
                                                                         torch_threads, used):
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)     # OMP_NUM_THREADS=1 gives 1
    llm = load_gguf(gguf_files["base"])
    try:
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (used, used)
    finally:
        llm.close()
    llm = load_gguf(gguf_files["base"], threads=3)
    try:
        assert (llm.context_params.n_threads, llm.context_params.n_threads_batch) == (3, 3)
    finally:
        llm.close()


def test_gguf_f16_gives_the_same_greedy_tokens(gguf_files, tokenizer):
    merged, llm = gguf_files["merged"], load_gguf(gguf_files["F16"])
    try:
        for prompt in PROMPTS:
            ids = prompt_ids(tokenizer, prompt)
            ours = generate_ids(merged, tokenizer, [ids], max_new_tokens=24)[0]
            assert llama_greedy(llm, ids, 24, tokenizer.eos_token_id) == ours, prompt
    finally:
        llm.close()
    assert gguf_files["F16"].stat().st_size < 0.55 * gguf_files["F32"].stat().st_size


@pytest.mark.equivalence
def test_lora_adapter_gguf_on_the_base_gives_the_adapted_logits(gguf_files, adapted, tokenizer):
    llm = load_gguf(gguf_files["base"], lora=gguf_files["adapter"])
    try:
        ids = prompt_ids(tokenizer, PROMPTS[1])
        assert_close(torch.from_numpy(llama_logits(llm, ids)), logits_of(adapted, ids),
                     n=transformer_path(adapted.config, len(ids)), msg="llama.cpp base + LoRA adapter")
    finally:
        llm.close()


def test_llama_cpp_tokenizes_like_transformers(gguf_files, tokenizer):
    from ftcourse.data.corpus import pretraining_documents
    from ftcourse.data.world import make_world

    texts = pretraining_documents(make_world(), 40, seed=3) + [
        "It's 42 apples, isn't it?  Two  spaces,\ttabs\nand lines\n\n",
        tokenizer.apply_chat_template([{"role": "user", "content": "What is 7 plus 5?"}], tokenize=False,
                                      add_generation_prompt=True)]
    llm = load_gguf(gguf_files["F32"])
    try:
        for text in texts:
            fresh = not text.startswith(tokenizer.bos_token)      # the chat template writes its own BOS
            assert llama_tokenize(llm, text, fresh) == tokenizer(text, add_special_tokens=fresh)["input_ids"]
    finally:
        llm.close()


def test_gguf_bad_inputs_are_clear_errors(adapted, tokenizer, tmp_path, tiny_llama):
    with pytest.raises(ValueError, match="merge them first"):
        write_gguf(adapted, tokenizer, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="Unknown GGUF file type 'Q3'"):
        write_gguf(tiny_llama, tokenizer, tmp_path / "x.gguf", "Q3")
    with pytest.raises(ValueError, match="no LoRA layers"):
        write_lora_gguf(tiny_llama, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="only Llama-family"):
        gguf_name("transformer.h.0.attn.c_attn")


def test_quantized_gguf_files_shrink_and_still_load(gguf_files, tokenizer, tmp_path):
    sizes = {}
    for kind in ("Q8_0", "Q4_0"):
        path = write_gguf(gguf_files["merged"], tokenizer, tmp_path / f"m-{kind}.gguf", kind)
        sizes[kind] = path.stat().st_size
        llm = load_gguf(path)
        try:
            logits = llama_logits(llm, prompt_ids(tokenizer, PROMPTS[0]))
        finally:
            llm.close()
        assert np.isfinite(logits).all()
    assert sizes["Q4_0"] < sizes["Q8_0"] < 0.35 * gguf_files["F32"].stat().st_size


@pytest.mark.equivalence
def test_llama_cpp_held_out_loss_is_transformers(gguf_files, tokenizer):
    import math

    from ftcourse.chat import tokenize_chat
    from ftcourse.evaluate import perplexity
    from ftcourse.llamacpp import llama_mean_loss
    from ftcourse.tolerance import loss_path

    examples = [tokenize_chat(tokenizer, [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": "Pelmora"}]) for prompt in PROMPTS]
    llm = load_gguf(gguf_files["F32"])
    try:
        ours = llama_mean_loss(llm, examples)
    finally:
        llm.close()
    merged = gguf_files["merged"]
    expected = math.log(perplexity(merged, examples, pad_id=tokenizer.pad_token_id))
    count = sum(sum(label != -100 for label in example["labels"]) for example in examples)
    tokens = max(len(example["input_ids"]) for example in examples)
    assert_close(ours, expected, n=loss_path(merged.config, tokens, count), dtype=torch.float32,
                 scale=expected)


@pytest.mark.equivalence
def test_llama_cpp_kl_is_torchs_kl_div_and_grows_with_rounding(gguf_files, base, tokenizer):
    from ftcourse.chat import tokenize_chat
    from ftcourse.llamacpp import llama_mean_kl

    examples = [tokenize_chat(tokenizer, [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": "Pelmora"}]) for prompt in PROMPTS]
    merged = gguf_files["merged"]
    kl = {}
    for kind in ("F32", "F16"):
        llm = load_gguf(gguf_files[kind])
        try:
            kl[kind] = llama_mean_kl(llm, examples, merged)
            pairs = [(torch.log_softmax(torch.from_numpy(llama_logits(llm, example["input_ids"])), -1),
                      torch.log_softmax(logits_of(merged, example["input_ids"]), -1),
                      torch.tensor(example["labels"][1:]) != -100) for example in examples]
        finally:
            llm.close()
        # torch's kl_div(input=log q, target=log p) summed over the vocabulary is KL(p || q)
        terms = [torch.nn.functional.kl_div(ours, theirs, log_target=True, reduction="none")[:-1][answer]
                 for ours, theirs, answer in pairs]
        per_token = torch.cat([term.sum(-1) for term in terms])
        largest = max(term.abs().sum(-1).max().item() for term in terms)   # a sum's own magnitude
        assert_close(kl[kind], per_token.mean().item(), n=merged.config.vocab_size + len(per_token),
                     dtype=torch.float32, scale=largest)
    llm = load_gguf(gguf_files["base"])
    try:
        from_base = llama_mean_kl(llm, examples, merged)     # the file without the adapter
    finally:
        llm.close()
    assert abs(kl["F32"]) < kl["F16"] < from_base, (kl, from_base)   # F32: 0 up to rounding
