"""Export: a fine-tuned model as a Hugging Face folder that any tool loads, with a model card.

`export_merged` folds LoRA (or QLoRA, dequantized first) into the weights of a copy of the model
and writes what `AutoModelForCausalLM.from_pretrained` reads: safetensors, config, generation
config, tokenizer with its chat template, and a README.md model card that states the data, the
method and the scores. The adapter alone is `lora.save_adapter` (peft's format, which peft and
vLLM's `--lora-modules` load); GGUF for llama.cpp is `ftcourse.llamacpp`. `bedrock_problems`
checks a folder against what Amazon Bedrock's Custom Model Import documents it needs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ftcourse._surgery import replace_modules
from ftcourse.lora import lora_layers, merge_lora
from ftcourse.qlora import dequantize, quantized_layers

MODEL_CARD = "README.md"


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with each LoRA update folded into its weight and the LoRA layers removed:
    a plain transformers model again, the same outputs, one matmul per layer; `model` is unchanged.

    A QLoRA model is dequantized first, so the merge is exact (`qlora.dequantize`). Methods that add
    weights of their own (soft prompts, IA3, bottleneck adapters) cannot become a plain model: their
    trained weights are exported with `methods.save_trained`, and this says so.
    """
    merged = copy.deepcopy(model)
    if quantized_layers(merged):
        dequantize(merged)
    merge_lora(merged)
    replace_modules(merged, list(lora_layers(merged)), lambda layer: layer.base_layer)
    if ours := [name or type(module).__name__ for name, module in merged.named_modules()
                if type(module).__module__.startswith("ftcourse.")]:
        raise ValueError(f"The model still holds ftcourse layers a plain model has no place for (e.g. "
                         f"{ours[0]!r}): only full fine-tuning, LoRA and QLoRA merge into the base. "
                         "Save what this method trained with ftcourse.methods.save_trained instead.")
    return merged.eval()


def model_card(*, base_model: str, method: str, config: str, data: str, scores: Mapping[str, str],
               notes: str = "") -> str:
    """A README.md for the hub: YAML metadata, then what it was trained on, how, and how it scores."""
    rows = "\n".join(f"| {name} | {score} |" for name, score in scores.items())
    return (f"---\nlibrary_name: transformers\nbase_model: {base_model}\npipeline_tag: text-generation\n"
            f"tags:\n- ftcourse\n- {method}\n---\n\n# Fine-tuned {base_model}\n\n"
            f"- **Method:** {method}: `{config}`\n- **Data:** {data}\n"
            "- **Made with:** ftcourse `export_merged` (adapters merged into the weights: load it as a "
            "plain model).\n\n"
            "## Scores (held-out test split, 95% bootstrap intervals)\n\n"
            f"| test | score |\n|---|---|\n{rows}\n"
            + (f"\n{notes}\n" if notes else ""))


def export_merged(model: nn.Module, tokenizer: Any, directory: str | Path, *, card: str) -> Path:
    """Write the merged model, its tokenizer and chat template, and `card` (see `model_card`).

    `AutoModelForCausalLM.from_pretrained(directory)` then gives the logits of the in-memory model.
    """
    return write_folder(merged_copy(model), tokenizer, directory, card=card)


def write_folder(plain: nn.Module, tokenizer: Any, directory: str | Path, *, card: str) -> Path:
    """Write a plain (already merged) model as `export_merged` does: for a caller that also needs
    the merged model itself (for GGUF files), so it merges once."""
    directory = Path(directory)
    plain.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / MODEL_CARD).write_text(card)
    return directory


# Amazon Bedrock Custom Model Import, as its user guide states it (docs.aws.amazon.com/bedrock/latest/
# userguide/model-customization-import-model.html, "Supported architectures" and "Import source"):
# a folder in Hugging Face weights format, .safetensors weights in FP32, FP16 or BF16, config.json,
# tokenizer_config.json and tokenizer.json, and an architecture it serves.
BEDROCK_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                         "MixtralForCausalLM": "mixtral", "Qwen2ForCausalLM": "qwen2",
                         "GPTBigCodeForCausalLM": "gpt_bigcode",
                         "FlanT5ForConditionalGeneration": "t5", "MllamaForConditionalGeneration": "mllama",
                         "GptOssForCausalLM": "gpt_oss"}
BEDROCK_DTYPES = {"float32", "float16", "bfloat16"}
BEDROCK_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def bedrock_problems(directory: str | Path) -> list[str]:
    """What keeps `directory` from Bedrock Custom Model Import; [] if nothing we can check here.

    Bedrock checks more when it imports (the account's quotas, the model's size and the Region's
    architectures); this catches what an export controls: format, files and config fields.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        return [f"no config.json in {directory}: Bedrock imports Hugging Face folders (save_pretrained)"]
    config = json.loads(config_path.read_text())
    problems = []
    if not list(directory.glob("*.safetensors")):
        problems.append("no *.safetensors weights: Bedrock reads safetensors only")
    if pickled := sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth")):
        problems.append(f"pickle weights {pickled}: Bedrock reads safetensors only; delete them")
    architectures = config.get("architectures") or []
    if not any(name in BEDROCK_ARCHITECTURES for name in architectures):
        problems.append(f"architectures {architectures} is not one Bedrock imports "
                        f"({', '.join(sorted(BEDROCK_ARCHITECTURES))})")
    elif config.get("model_type") not in BEDROCK_ARCHITECTURES.values():
        problems.append(f"model_type {config.get('model_type')!r} does not match the architecture")
    if (dtype := config.get("dtype", config.get("torch_dtype"))) not in BEDROCK_DTYPES:
        problems.append(f"dtype {dtype!r}: Bedrock imports {', '.join(sorted(BEDROCK_DTYPES))} weights")
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                  "max_position_embeddings"):
        if not isinstance(config.get(field), int):
            problems.append(f"config.json has no {field}")
    problems += [f"no {name}: Bedrock tokenizes with the folder's own tokenizer"
                 for name in BEDROCK_TOKENIZER_FILES if not (directory / name).is_file()]
    return problems


__all__ = ["bedrock_problems", "export_merged", "merged_copy", "model_card", "write_folder"]
