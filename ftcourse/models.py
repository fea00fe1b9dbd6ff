"""Base models: the embedded tiny pretrained Llama, or any hub id or local path, one code path.

`load_base()` returns (model, tokenizer) for the active profile: on the tiny profile the
checkpoint that ships inside the package (offline, about a second); on the GPU profiles a real
model from the Hugging Face cache or a local folder. Weights load from safetensors only and
remote code runs only when asked for.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ftcourse.batching import default_device
from ftcourse.chat import CHATML_TEMPLATE, CHATML_TOKENS, assistant_turn_end
from ftcourse.profiles import Profile, get_profile

EMBEDDED_MODEL = Path(__file__).parent / "assets" / "tiny-llama"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, or a hub id to look up; a path that does not exist is an error here."""
    if name_or_path == "embedded":
        return str(EMBEDDED_MODEL)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"Model folder {path} has no config.json; point to a folder "
                                    "written by save_pretrained (config.json, *.safetensors).")
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1
    if looks_like_path:
        raise FileNotFoundError(f"Model path {name_or_path!r} does not exist. Pass an existing "
                                "folder, a hub id such as 'HuggingFaceTB/SmolLM2-135M', or nothing "
                                "for the embedded tiny model.")
    return name_or_path


def load_base(name_or_path: str | None = None, *, profile: str | Profile | None = None,
              dtype: str | None = None, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of the profile's base model, or of `name_or_path` if given.

    Args:
        name_or_path: None for the profile's model, "embedded", a hub id, or a local folder.
        dtype: "float32" / "bfloat16" / "float16"; default the profile's.
        trust_remote_code: run model code shipped with a hub repository (off unless you ask).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    profile = get_profile(profile)
    source = resolve_model_path(name_or_path or profile.base_model)
    dtype = dtype or profile.dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    _require_safetensors(source)
    offline = Path(source).exists() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": offline}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype],
                                                     use_safetensors=True, **kwargs)
    except OSError as err:
        reason = ("offline, and not in the local cache" if offline
                  else f"download failed: {type(err).__name__}")
        raise FileNotFoundError(
            f"Model {source!r} is not a local folder and could not be loaded from the Hugging Face "
            f"hub ({reason}). Download it once with network access (`huggingface-cli download "
            f"{source}`), pass the path of a local copy, or use the tiny profile, which needs no "
            "download.") from err
    ensure_chat_format(model, tokenizer)
    ensure_distinct_pad(model, tokenizer)
    return model.to(default_device()).eval(), tokenizer


def model_label(model: Any) -> str:
    """A short name for tables: "ftcourse tiny" for the embedded model, else the hub id or folder name."""
    source = Path(getattr(model, "name_or_path", "") or "model")
    return "ftcourse tiny" if source == EMBEDDED_MODEL else str(source).rstrip("/").split("/")[-1]


def _require_safetensors(source: str) -> None:
    # A local folder whose weights are pickle files only: refuse it by name, before transformers
    # reports it as a missing file.
    folder = Path(source)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled:
            raise ValueError(f"Model folder {folder} holds {pickled[0]}, a pickle file, which can run code "
                             "when loaded; ftcourse loads *.safetensors weights only. If you trust the file, "
                             "convert it: AutoModelForCausalLM.from_pretrained(folder).save_pretrained("
                             "new_folder, safe_serialization=True).")
        raise FileNotFoundError(f"Model folder {folder} has no *.safetensors weights; point to a folder "
                                "written by save_pretrained.")


def ensure_chat_format(model: Any, tokenizer: Any) -> None:
    """Give the tokenizer a chat template whose assistant turns end with its EOS token.

    A base model's tokenizer may have no template (it gets ChatML, with its two tokens added if
    new), or one whose turns end with another token than EOS, as SmolLM2's ChatML `<|im_end|>`
    while EOS is `<|endoftext|>`: that token becomes EOS, so SFT teaches the model to emit it and
    generation stops there.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or "The tokenizer"
        warnings.warn(f"{name} has no chat template (a base model); using ChatML, whose <|im_start|> "
                      "and <|im_end|> are added if new.", stacklevel=2)
        if tokenizer.add_special_tokens({"additional_special_tokens": list(CHATML_TOKENS)},
                                        replace_extra_special_tokens=False):
            model.resize_token_embeddings(len(tokenizer))
        tokenizer.chat_template = CHATML_TEMPLATE
    end = assistant_turn_end(tokenizer)
    if end is None:
        raise ValueError("The chat template ends an assistant turn with no special token, so a fine-tuned "
                         "model cannot learn where to stop. Set tokenizer.chat_template to one that does "
                         "(e.g. ftcourse.chat.CHATML_TEMPLATE).")
    if end != tokenizer.eos_token:
        warnings.warn(f"The chat template ends an assistant turn with {end!r}, not EOS "
                      f"{tokenizer.eos_token!r} (a base model's tokenizer); using {end!r} as EOS, so "
                      "generation stops after a turn.", stacklevel=2)
        tokenizer.eos_token = end
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def ensure_distinct_pad(model: Any, tokenizer: Any, pad_token: str = "<pad>") -> None:
    """Give the tokenizer a pad token distinct from EOS, growing the embeddings if it is new.

    With pad == eos, data collators mask every EOS as padding and the model never learns to stop.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
        return
    warnings.warn(f"{type(model).__name__}: pad token {tokenizer.pad_token!r} is missing or equals "
                  f"EOS; using {pad_token!r} (added and embeddings resized if new), so EOS stays a label.",
                  stacklevel=2)
    tokenizer.add_special_tokens({"pad_token": pad_token})
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
