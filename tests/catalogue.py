"""The catalogue of bad inputs: each one fed to ftcourse, and what ftcourse must say about it.

Every entry is a small function that makes one mistake a learner or an engineer makes; the
decorator records what must happen (an error or a warning of a given type) and what its message
must say. tests/test_catalogue.py feeds them all; `python tests/catalogue.py` writes the table of
the book's reliability page (book/_catalogue.md) from the same entries, with the real messages.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from unittest import mock

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "book" / "_catalogue.md"


@dataclass(frozen=True)
class BadInput:
    """One bad input: where it enters, what it is, what must happen and what the message says."""

    name: str
    area: str
    what: str
    expect: type[Exception] | type[Warning]
    says: tuple[str, ...]
    feed: Callable[[Path], object]


CASES: dict[str, BadInput] = {}


def bad_input(area: str, what: str, expect: type, *says: str) -> Callable:
    """Register the decorated function (it takes a scratch folder) as a catalogue entry."""
    def register(feed: Callable[[Path], object]) -> Callable[[Path], object]:
        CASES[feed.__name__] = BadInput(feed.__name__, area, what, expect, says, feed)
        return feed
    return register


class CommandFailed(Exception):
    """The `ftcourse` command exited with an error; the message is what it printed to stderr."""


@dataclass(frozen=True)
class Observed:
    message: str
    origin: str | None   # the file that raised the error (None for warnings and commands)


def observe(case: BadInput, scratch: Path) -> Observed:
    """Feed the bad input; return the message of the error or warning it must produce."""
    if issubclass(case.expect, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.feed(scratch)
        found = [w for w in caught if issubclass(w.category, case.expect)]
        if not found:
            raise AssertionError(f"{case.name}: no {case.expect.__name__} was issued")
        return Observed(str(found[0].message), None)
    try:
        case.feed(scratch)
    except case.expect as err:
        frame = err.__traceback__
        while frame.tb_next is not None:
            frame = frame.tb_next
        origin = None if isinstance(err, CommandFailed) else frame.tb_frame.f_code.co_filename
        return Observed(str(err), origin)
    raise AssertionError(f"{case.name}: no {case.expect.__name__} was raised")


# ---------------------------------------------------------------- shared materials

@cache
def _base() -> tuple:
    from ftcourse.models import load_base

    return load_base(profile="tiny")


def base_model():
    """A private copy of the embedded model (an entry may change it)."""
    return copy.deepcopy(_base()[0])


def tokenizer():
    return copy.deepcopy(_base()[1])


def small_llama(hidden_size: int = 64):
    """A random Llama with the embedded tokenizer's vocabulary, smaller than the base model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _base()[1]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(config)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def run_command(*argv: str) -> None:
    """Run `ftcourse ARGV`; raise CommandFailed with its stderr unless it exits with status 0."""
    from ftcourse.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    if code:
        lines = err.getvalue().strip().splitlines()
        said = next(i for i, line in enumerate(lines) if line.startswith("ftcourse "))   # after the usage
        raise CommandFailed(f"exit {code}: " + "\n".join(lines[said:]))


def saved_adapter(scratch: Path, model=None, r: int = 4) -> Path:
    from ftcourse.lora import LoRA, apply_lora, save_adapter

    config = LoRA(r=r, alpha=8.0)
    model = apply_lora(model if model is not None else small_llama(), config)
    return save_adapter(model, scratch / f"adapter-r{r}", config)


INSTRUCTION_FIELDS = ("instruction", "response")


# ---------------------------------------------------------------- data files and datasets

@bad_input("data", "a data file that does not exist", FileNotFoundError, "No data file", "missing.jsonl")
def data_file_missing(scratch):
    from ftcourse.data import read_rows
    read_rows(scratch / "missing.jsonl", INSTRUCTION_FIELDS)


@bad_input("data", "a .jsonl line that is not valid JSON", ValueError, "line 2 is not valid JSON",
           "column", "one JSON object")
def data_line_not_json(scratch):
    from ftcourse.data import read_rows
    path = write(scratch / "d.jsonl", '{"instruction": "a", "response": "b"}\n'
                                      '{"instruction": "c", response}\n')
    read_rows(path, INSTRUCTION_FIELDS)


@bad_input("data", "text that is not UTF-8 (a Latin-1 file)", ValueError, "is not UTF-8", "line 2",
           "0xe9", "iconv")
def data_not_utf8(scratch):
    from ftcourse.data import read_rows
    path = write(scratch / "d.jsonl", b'{"instruction": "a", "response": "b"}\n'
                 + '{"instruction": "caf\u00e9", "response": "b"}\n'.encode("latin-1"))
    read_rows(path, INSTRUCTION_FIELDS)


@bad_input("data", "a .jsonl line holding a list instead of an object", ValueError, "line 1",
           "is a JSON list, not an object")
def data_line_not_object(scratch):
    from ftcourse.data import read_rows
    read_rows(write(scratch / "d.jsonl", '["a", "b"]\n'), INSTRUCTION_FIELDS)


@bad_input("data", "a .json file that holds one object, not a list", ValueError, "holds a JSON dict",
           "name the file .jsonl")
def data_json_not_list(scratch):
    from ftcourse.data import read_rows
    read_rows(write(scratch / "d.json", '{"instruction": "a", "response": "b"}'), INSTRUCTION_FIELDS)


@bad_input("data", "an empty data file", ValueError, "has no rows", "'instruction'")
def data_file_empty(scratch):
    from ftcourse.data import read_rows
    read_rows(write(scratch / "d.jsonl", "\n\n"), INSTRUCTION_FIELDS)


@bad_input("data", "a data file with a suffix other than .jsonl, .json, .csv or .parquet", ValueError,
           "'.txt'", "data files are .jsonl")
def data_file_wrong_suffix(scratch):
    from ftcourse.data import read_rows
    read_rows(write(scratch / "d.txt", "instruction,response\n"), INSTRUCTION_FIELDS)


@bad_input("data", "a UTF-8 file that starts with a byte-order mark (as Windows editors write)", UserWarning,
           "byte-order mark (BOM)", "dropped")
def data_file_with_bom(scratch):
    from ftcourse.data import read_rows
    read_rows(write(scratch / "d.jsonl", b"\xef\xbb\xbf" + b'{"instruction": "a", "response": "b"}\n'),
              INSTRUCTION_FIELDS)


@bad_input("data", "a CSV row with more cells than the header (an unquoted comma)", ValueError, "line 3",
           "more cells than the header", "quote")
def data_csv_unquoted_comma(scratch):
    from ftcourse.data import read_rows
    read_rows(write(scratch / "d.csv", "instruction,response\nSay hi,hi\nWhere is Paris,Paris, France\n"),
              INSTRUCTION_FIELDS)


@bad_input("data", "a chat that ends with the user's turn, so there is no answer to learn", ValueError,
           "row 1 ends with a user turn", "end each chat with the assistant")
def data_chat_ends_with_user(scratch):
    from ftcourse.data import read_training_rows
    chats = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
              {"role": "user", "content": "Bye"}]]
    read_training_rows(write(scratch / "d.jsonl", "\n".join(json.dumps({"messages": c}) for c in chats)))


@bad_input("data", "a file that mixes chats and instruction/response rows", ValueError,
           "row 1 has no 'messages'", "not both")
def data_mixed_shapes(scratch):
    from ftcourse.data import read_training_rows
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"instruction": "Say hi", "response": "hi"}]
    read_training_rows(write(scratch / "d.jsonl", "\n".join(json.dumps(r) for r in rows)))


@bad_input("data", "extra fields the task does not use (Alpaca's 'input')", UserWarning,
           "dropped 1 field(s)", "'input' (in 2 of 3 rows)", "merge")
def data_extra_fields(scratch):
    from ftcourse.data import read_rows
    rows = [{"instruction": "Add", "input": "2 and 3", "response": "5"},
            {"instruction": "Add", "input": "1 and 1", "response": "2"},
            {"instruction": "Say hi", "response": "hi"}]
    read_rows(write(scratch / "d.jsonl", "\n".join(json.dumps(r) for r in rows)), INSTRUCTION_FIELDS)


@bad_input("data", "an empty dataset", ValueError, "is empty", "at least one row")
def dataset_empty(scratch):
    from ftcourse.data import require_fields
    require_fields([], INSTRUCTION_FIELDS)


@bad_input("data", "a field missing from every row (a column named 'output')", ValueError,
           "has no field 'response'", "rename_column")
def dataset_column_missing(scratch):
    import datasets

    from ftcourse.data import require_fields
    require_fields(datasets.Dataset.from_list([{"instruction": "a", "output": "b"}]), INSTRUCTION_FIELDS)


@bad_input("data", "a field missing from one row", ValueError, "row 1 has no field 'response'")
def dataset_row_missing_field(scratch):
    from ftcourse.data import require_fields
    require_fields([{"instruction": "a", "response": "b"}, {"instruction": "c"}], INSTRUCTION_FIELDS)


@bad_input("data", "a field of the wrong type (a number for a string)", ValueError,
           "row 0: field 'response' must be a string, got int 5")
def dataset_wrong_type(scratch):
    from ftcourse.data import require_fields
    require_fields([{"instruction": "2 + 3?", "response": 5}], INSTRUCTION_FIELDS)


@bad_input("data", "an empty response", ValueError, "row 0: field 'response' is empty")
def dataset_empty_response(scratch):
    from ftcourse.data import require_fields
    require_fields([{"instruction": "Say nothing", "response": "  "}], INSTRUCTION_FIELDS)


@bad_input("data", "the same prompt in the train and test splits", ValueError,
           "1 instruction(s) appear in more than one split", "in train and test", "split_rows")
def splits_share_a_prompt(scratch):
    from ftcourse.data import require_disjoint
    require_disjoint({"train": [{"instruction": "Capital of Pelmora?"}, {"instruction": "2 + 2?"}],
                      "test": [{"instruction": "Capital of Pelmora?"}]}, "instruction")


@bad_input("data", "a prompt repeated within a downloaded dataset", UserWarning,
           "repeats the instruction of an earlier row 2 time(s) out of 4 rows")
def dataset_repeats_a_prompt(scratch):
    from ftcourse.data.checks import drop_duplicates
    drop_duplicates([{"instruction": q} for q in ("a", "b", "a", "a")], "instruction")


@bad_input("data", "an unknown task name", ValueError, "Unknown task 'qna'", "known tasks: instructions")
def unknown_task(scratch):
    from ftcourse.data import load_task
    load_task("qna")


# ---------------------------------------------------------------- formatting and tokenisation

@bad_input("format", "a chat turn with an unknown role", ValueError, "message 0: unknown role 'human'",
           "system, user, assistant")
def chat_unknown_role(scratch):
    from ftcourse.chat import tokenize_chat
    tokenize_chat(tokenizer(), [{"role": "human", "content": "hi"},
                                {"role": "assistant", "content": "hello"}])


@bad_input("format", "a chat without an assistant turn", ValueError, "has no assistant turn",
           "nothing to learn")
def chat_without_answer(scratch):
    from ftcourse.chat import tokenize_chat
    tokenize_chat(tokenizer(), [{"role": "user", "content": "hi"}])


@bad_input("format", "a chat that opens with the assistant", ValueError, "opens with an assistant turn",
           "open it with a system or user turn")
def chat_opens_with_answer(scratch):
    from ftcourse.chat import tokenize_chat
    tokenize_chat(tokenizer(), [{"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}])


@bad_input("format", "text that spells a special token ('<eos>' inside an answer)", ValueError,
           "message 1 (assistant): the text contains '<eos>'", "reads as a special token")
def text_spells_a_special_token(scratch):
    from ftcourse.chat import tokenize_example
    tokenize_example(tokenizer(), "How do chats end?", "With <eos> at the end.")


@bad_input("format", "a tokenizer without a chat template", ValueError, "has no chat template",
           "tokenizer.chat_template = ftcourse.chat.CHAT_TEMPLATE")
def tokenizer_without_chat_template(scratch):
    from ftcourse.chat import tokenize_example
    tok = tokenizer()
    tok.chat_template = None
    tokenize_example(tok, "2 + 2?", "4")


@bad_input("format", "a chat template whose assistant turn ends with no special token", ValueError,
           "ends an assistant turn with no special token", "ftcourse.chat.CHATML_TEMPLATE")
def chat_template_without_turn_end(scratch):
    from ftcourse.models import ensure_chat_format
    tok = tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ensure_chat_format(small_llama(), tok)


@bad_input("format", "a pad token equal to EOS", UserWarning, "equals EOS", "EOS stays a label")
def pad_equals_eos(scratch):
    from ftcourse.models import ensure_distinct_pad
    model, tok = small_llama(), tokenizer()
    tok.pad_token = tok.eos_token
    ensure_distinct_pad(model, tok)


@bad_input("format", "a preference pair whose chosen and rejected answers are the same", ValueError,
           "chosen and rejected are the same answer", "drop the pair")
def preference_pair_identical(scratch):
    from ftcourse.chat import tokenize_pair
    tokenize_pair(tokenizer(), "2 + 2?", "4", " 4 ")


@bad_input("format", "some examples longer than the model's context", UserWarning,
           "Left out 1 of 2 examples longer than 128 tokens", "row 1")
def examples_longer_than_context(scratch):
    from ftcourse.sft import tokenize_instructions
    rows = [{"instruction": "Say hi", "response": "hi"},
            {"instruction": "Repeat " + "the word " * 100, "response": "ok"}]
    tokenize_instructions(tokenizer(), rows, 128)


@bad_input("format", "every example longer than the context", ValueError,
           "All 1 examples are longer than max_len=16", "none is left to train on")
def all_examples_too_long(scratch):
    from ftcourse.sft import tokenize_instructions
    tokenize_instructions(tokenizer(), [{"instruction": "Repeat " + "the word " * 20, "response": "ok"}], 16)


@bad_input("format", "preference pairs longer than the context", UserWarning,
           "Left out 1 of 2 examples longer than 40 tokens")
def preference_pairs_too_long(scratch):
    from ftcourse.dpo import tokenize_pairs
    pairs = [{"prompt": "2 + 2?", "chosen": "4", "rejected": "5"},
             {"prompt": "Repeat " + "the word " * 30, "chosen": "ok", "rejected": "no"}]
    tokenize_pairs(tokenizer(), pairs, 40)


@bad_input("format", "packing an example longer than the row length", ValueError,
           "1 example(s) (first: 1) are longer than max_len=4", "keeps examples whole")
def packing_too_long(scratch):
    from ftcourse.batching import pack_examples
    pack_examples([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1] * 9, "labels": [1] * 9}], 4)


@bad_input("format", "packing an example with no tokens", ValueError,
           "1 example(s) (first: 0) have no tokens")
def packing_empty_example(scratch):
    from ftcourse.batching import pack_examples
    pack_examples([{"input_ids": [], "labels": []}, {"input_ids": [7, 8], "labels": [7, 8]}], 4)


# ---------------------------------------------------------------- methods and their settings

@bad_input("config", "an unknown profile", ValueError, "Unknown profile 'huge'", "known profiles: tiny")
def unknown_profile(scratch):
    from ftcourse.profiles import get_profile
    get_profile("huge")


@bad_input("config", "an FTCOURSE_DTYPE that is no dtype", ValueError,
           "FTCOURSE_DTYPE must be float32, bfloat16 or float16, got 'fp8'")
def profile_dtype_unknown(scratch):
    from ftcourse.profiles import get_profile
    with mock.patch.dict(os.environ, {"FTCOURSE_DTYPE": "fp8"}):
        get_profile("gpu")


@bad_input("data", "FTCOURSE_DATA_DIR without the local copy of a hub dataset", FileNotFoundError,
           "yahma--alpaca-cleaned.jsonl is missing", "ftcourse download --profile gpu --to DIR")
def hub_local_copy_missing(scratch):
    from ftcourse.data.hub import load_hub_task
    load_hub_task("instructions", scratch)


@bad_input("data", "a local copy of a hub dataset without the hub's columns", ValueError,
           "has no column(s) ['id', 'title']", "must keep the hub's columns")
def hub_local_copy_wrong_columns(scratch):
    from ftcourse.data.hub import load_hub_task
    write(scratch / "rajpurkar--squad.jsonl",
          '{"context": "Ann lives in Pelmora.", "question": "Where?", "answers": {"text": ["Pelmora"]}}\n')
    load_hub_task("qa", scratch)


@bad_input("config", "an unknown method", ValueError, "Unknown method 'lora2'", "available methods: full")
def unknown_method(scratch):
    from ftcourse.methods import get_method
    get_method("lora2")


@bad_input("config", "LoRA rank r = 0", ValueError, "r must be a positive int, got 0")
def lora_rank_zero(scratch):
    from ftcourse.lora import LoRA
    LoRA(r=0)


@bad_input("config", "LoRA alpha <= 0 and dropout >= 1", ValueError, "alpha must be > 0, got -16",
           "dropout must be in [0, 1), got 1.5")
def lora_alpha_negative(scratch):
    from ftcourse.lora import LoRA
    LoRA(alpha=-16, dropout=1.5)


@bad_input("config", "a LoRA target module that does not exist", ValueError,
           "Target module(s) ['qkv_proj'] match no", "available names: ['down_proj', 'gate_proj'")
def lora_unknown_target(scratch):
    from ftcourse.lora import LoRA, apply_lora
    apply_lora(small_llama(), LoRA(targets=("q_proj", "qkv_proj")))


@bad_input("config", "LoRA on a model that already has LoRA layers (finetune twice on one model object)",
           ValueError, "already has 4 LoRA layer(s)", "adapted before", "fresh copy of the base")
def lora_on_adapted_model(scratch):
    from ftcourse.lora import LoRA, apply_lora
    apply_lora(apply_lora(small_llama(), LoRA()), LoRA())


@bad_input("config", "a 4-bit block size that cannot split bytes (odd)", ValueError,
           "blocksize must be a positive even int", "got 3")
def nf4_odd_blocksize(scratch):
    from ftcourse.quant import quantize_4bit
    quantize_4bit(torch.randn(64), blocksize=3)


@bad_input("config", "quantizing an integer tensor", ValueError, "needs a non-empty float tensor",
           "torch.int64")
def nf4_integer_tensor(scratch):
    from ftcourse.quant import quantize_4bit
    quantize_4bit(torch.arange(64))


@bad_input("config", "a QLoRA storage type bitsandbytes does not have", ValueError,
           "quant_type must be 'nf4' or 'fp4'", "got 'int8'")
def qlora_unknown_quant_type(scratch):
    from ftcourse.qlora import QLoRA
    QLoRA(quant_type="int8")


@bad_input("config", "attention heads that do not divide into key/value groups", ValueError,
           "num_heads (6) must be a multiple of num_kv_heads (4)")
def heads_do_not_divide(scratch):
    from ftcourse.transformer import TransformerConfig
    TransformerConfig(vocab_size=100, hidden_size=48, intermediate_size=96, num_layers=1, num_heads=6,
                      num_kv_heads=4, head_dim=8)


@bad_input("config", "prompt tuning with 0 virtual tokens", ValueError,
           "num_virtual_tokens must be a positive int, got 0")
def prompt_tuning_zero_tokens(scratch):
    from ftcourse.prompts import PromptTuning
    PromptTuning(num_virtual_tokens=0)


@bad_input("config", "more virtual tokens than the model has positions", ValueError,
           "200 virtual tokens do not fit the model's 128 positions")
def prompt_tuning_too_many_tokens(scratch):
    from ftcourse.prompts import PromptTuning
    PromptTuning(num_virtual_tokens=200).apply(small_llama())


@bad_input("config", "DPO beta = 0", ValueError, "beta must be > 0, got 0", "0.1 is the usual start")
def dpo_beta_zero(scratch):
    from ftcourse.dpo import DPO
    DPO(beta=0)


@bad_input("config", "a training run with lr = 0 and batch size 0", ValueError,
           "batch_size must be >= 1, got 0", "lr must be > 0, got 0")
def train_config_out_of_range(scratch):
    from ftcourse.train import TrainConfig
    TrainConfig(max_steps=10, lr=0, batch_size=0)


@bad_input("config", "both max_steps and epochs", ValueError, "give exactly one of max_steps and epochs")
def train_config_two_lengths(scratch):
    from ftcourse.train import TrainConfig
    TrainConfig(max_steps=10, epochs=1)


@bad_input("config", "a training run with an optimizer ftcourse does not have", ValueError,
           "optimizer must be one of 'adamw' (torch.optim.AdamW)",
           "'adamw-8bit' (bitsandbytes.optim.AdamW8bit), got 'adam8bit'")
def train_config_unknown_optimizer(scratch):
    from ftcourse.train import TrainConfig
    TrainConfig(max_steps=10, optimizer="adam8bit")


@bad_input("config", "a memory question with ZeRO stage 4", ValueError,
           "zero_stage must be 0, 1, 2 or 3, got 4")
def memory_setup_bad_zero_stage(scratch):
    from ftcourse.memory import Setup
    Setup(zero_stage=4)


# ---------------------------------------------------------------- models and generation

@bad_input("model", "a model path that does not exist", FileNotFoundError,
           "Model path './no-such-model' does not exist", "embedded tiny model")
def model_path_missing(scratch):
    from ftcourse.models import load_base
    load_base("./no-such-model")


@bad_input("model", "a model folder without config.json", FileNotFoundError, "has no config.json",
           "save_pretrained")
def model_folder_without_config(scratch):
    from ftcourse.models import load_base
    load_base(str(scratch))


@bad_input("safety", "a model folder whose weights are a pickle (pytorch_model.bin)", ValueError,
           "holds pytorch_model.bin, a pickle file", "loads *.safetensors weights only",
           "safe_serialization=True")
def model_pickle_weights(scratch):
    from ftcourse.models import EMBEDDED_MODEL, load_base
    for file in EMBEDDED_MODEL.iterdir():
        if file.suffix != ".safetensors":
            (scratch / file.name).write_bytes(file.read_bytes())
    torch.save({}, scratch / "pytorch_model.bin")
    load_base(str(scratch))


@bad_input("model", "an unknown dtype", ValueError, "Unknown dtype 'fp8'", "float32, bfloat16, float16")
def model_unknown_dtype(scratch):
    from ftcourse.models import load_base
    load_base(dtype="fp8")


@bad_input("model", "a sequence longer than the model's positions", ValueError,
           "Sequence of 300 tokens is longer than the model's 128 positions")
def sequence_too_long(scratch):
    from ftcourse.transformer import Transformer
    Transformer.from_hf(small_llama())(torch.zeros(1, 300, dtype=torch.long))


@bad_input("model", "token ids from another tokenizer (beyond the vocabulary)", ValueError,
           "outside the model's vocabulary of", "encoded with another tokenizer")
def prompt_outside_vocabulary(scratch):
    from ftcourse.generate import generate_ids
    model = small_llama()
    generate_ids(model, tokenizer(), [[1, 2, model.config.vocab_size + 5]], max_new_tokens=2)


@bad_input("model", "a prompt plus new tokens beyond the positions", ValueError,
           "1 prompt(s) (first: index 0) plus max_new_tokens=100 exceed the model's 128 positions")
def generation_too_long(scratch):
    from ftcourse.generate import generate_ids
    generate_ids(small_llama(), tokenizer(), [[1] * 40], max_new_tokens=100)


@bad_input("model", "training on sequences longer than the model's positions", ValueError,
           "1 example(s) (first: 1, 200 tokens) are longer than the model's 128 positions",
           "without an error", "leave_out_too_long")
def train_sequences_too_long(scratch):
    from ftcourse.train import TrainConfig, train
    train(small_llama(), [{"input_ids": [1, 2, 3]}, {"input_ids": [1] * 200}], TrainConfig(max_steps=1),
          progress=False)


@bad_input("model", "a perplexity over sequences longer than the positions", ValueError,
           "1 example(s) (first: 0, 300 tokens) are longer than the model's 128 positions")
def perplexity_too_long(scratch):
    from ftcourse.evaluate import perplexity
    perplexity(small_llama(), [{"input_ids": [1] * 300}])


@bad_input("model", "training a model with nothing trainable", ValueError,
           "has no trainable parameters", "Apply a fine-tuning method")
def nothing_trainable(scratch):
    from ftcourse.train import TrainConfig, train
    model = small_llama().requires_grad_(False)
    train(model, [{"input_ids": [1, 2, 3]}], TrainConfig(max_steps=1), progress=False)


@bad_input("model", "training float16 weights (no loss scaling)", ValueError,
           "trainable tensor(s) are float16 (first: model.embed_tokens.weight)", "Train float32 weights")
def train_float16_weights(scratch):
    from ftcourse.train import TrainConfig, train
    train(small_llama().half(), [{"input_ids": [1, 2, 3]}], TrainConfig(max_steps=1), progress=False)


@bad_input("model", "training a model whose weights were never loaded (meta device)", ValueError,
           "are on the meta device", "init_empty_weights", "Load the weights first")
def train_meta_weights(scratch):
    from ftcourse.train import TrainConfig, train
    with torch.device("meta"):
        model = small_llama()
    train(model, [{"input_ids": [1, 2, 3]}], TrainConfig(max_steps=1), progress=False)


@bad_input("model", "labels that mask every token", ValueError, "Step 1 has no items to learn from",
           "label masking")
def all_labels_masked(scratch):
    from ftcourse.train import TrainConfig, train
    train(small_llama(), [{"input_ids": [1, 2, 3], "labels": [-100] * 3}], TrainConfig(max_steps=1),
          progress=False)


# ---------------------------------------------------------------- adapters

@bad_input("adapter", "an adapter for another base model", ValueError, "Shape mismatch for",
           "(4, 64) but this model needs (4, 32)", "another base model or another rank")
def adapter_for_another_model(scratch):
    from ftcourse.lora import load_adapter
    load_adapter(small_llama(hidden_size=32), saved_adapter(scratch, small_llama(hidden_size=64)))


@bad_input("adapter", "an adapter of another rank loaded onto LoRA layers", ValueError,
           "Shape mismatch for", "(8, 64) but this model needs (4, 64)")
def adapter_of_another_rank(scratch):
    from ftcourse.lora import LoRA, apply_lora, load_adapter
    model = apply_lora(small_llama(), LoRA(r=4, alpha=8.0))
    load_adapter(model, saved_adapter(scratch, r=8))


@bad_input("adapter", "an adapter folder without adapter_config.json", FileNotFoundError,
           "No adapter_config.json in", "is it an adapter folder?")
def adapter_folder_empty(scratch):
    from ftcourse.lora import load_adapter
    load_adapter(small_llama(), scratch)


@bad_input("adapter", "a prefix-tuning adapter loaded as LoRA", ValueError,
           "describes a 'PREFIX_TUNING' adapter, not LoRA")
def adapter_of_another_kind(scratch):
    from ftcourse.lora import load_adapter
    write(scratch / "adapter_config.json", json.dumps({"peft_type": "PREFIX_TUNING"}))
    load_adapter(small_llama(), scratch)


@bad_input("adapter", "a truncated adapter_model.safetensors", ValueError,
           "is not a readable safetensors file (truncated or corrupt", "save the adapter again")
def adapter_truncated(scratch):
    from ftcourse.lora import load_adapter
    folder = saved_adapter(scratch)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    load_adapter(small_llama(), folder)


@bad_input("safety", "an adapter saved as a pickle (adapter_model.bin)", ValueError,
           "holds adapter_model.bin, a pickle file", "loads adapter_model.safetensors only",
           "safe_serialization=True")
def adapter_pickle(scratch):
    from ftcourse.lora import load_adapter
    folder = saved_adapter(scratch)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    load_adapter(small_llama(), folder)


# ---------------------------------------------------------------- checkpoints

RUN = dict(max_steps=2, batch_size=2, lr=1e-3, save_every=1)
EXAMPLES = [{"input_ids": [1, 5, 9, 13, 2]}, {"input_ids": [1, 7, 3, 2]}]


def checkpointed(scratch: Path) -> Path:
    """The checkpoint folder of a 2-step run of a small model (step-0000001 and step-0000002)."""
    from ftcourse.train import TrainConfig, train
    train(small_llama(), EXAMPLES, TrainConfig(**RUN), checkpoint_dir=scratch / "run", progress=False)
    return scratch / "run"


def restore(path: Path, model=None, **changes) -> None:
    """Load checkpoint `path` as a resumed run does, into `model` (default: a fresh small model)."""
    from dataclasses import asdict

    from ftcourse.checkpoints import load_checkpoint
    from ftcourse.train import TrainConfig, make_optimizer
    config = TrainConfig(**{**RUN, **changes})
    model = model if model is not None else small_llama()
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    load_checkpoint(path, model, optimizer, scheduler, asdict(config))


@bad_input("checkpoint", "a truncated checkpoint file", ValueError, "is damaged",
           "trainable.safetensors is truncated: expected", "Resume from an earlier step-N folder")
def checkpoint_truncated(scratch):
    path = checkpointed(scratch) / "step-0000002"
    weights = path / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    restore(path)


@bad_input("checkpoint", "a checkpoint file with flipped bytes", ValueError,
           "optimizer.pt is corrupt: sha256 hash mismatch")
def checkpoint_corrupt(scratch):
    path = checkpointed(scratch) / "step-0000002"
    data = bytearray((path / "optimizer.pt").read_bytes())
    data[-100:-90] = bytes(10)
    (path / "optimizer.pt").write_bytes(bytes(data))
    restore(path)


@bad_input("checkpoint", "a checkpoint with a file missing", ValueError, "state.json is missing")
def checkpoint_missing_file(scratch):
    path = checkpointed(scratch) / "step-0000002"
    (path / "state.json").unlink()
    restore(path)


@bad_input("checkpoint", "resuming when the newest checkpoint is damaged", UserWarning,
           "Skipping damaged checkpoint", "step-0000002", "Falling back to the checkpoint before it",
           "left on disk")
def checkpoint_newest_damaged(scratch):
    from ftcourse.train import TrainConfig, train
    run = checkpointed(scratch)
    (run / "step-0000002" / "optimizer.pt").write_bytes(b"")
    train(small_llama(), EXAMPLES, TrainConfig(**RUN), checkpoint_dir=run, resume=True, progress=False)


@bad_input("checkpoint", "a half-written checkpoint left by a killed run", UserWarning,
           "Ignoring", ".tmp-step-0000002: a checkpoint whose save was interrupted",
           "resumes from the newest complete checkpoint")
def checkpoint_half_written(scratch):
    from ftcourse.train import TrainConfig, train
    run = checkpointed(scratch)
    (run / "step-0000002").rename(run / ".tmp-step-0000002")
    (run / ".tmp-step-0000002" / "manifest.json").unlink()
    train(small_llama(), EXAMPLES, TrainConfig(**RUN), checkpoint_dir=run, resume=True, progress=False)


@bad_input("checkpoint", "resuming with another training config", ValueError,
           "was written with a different TrainConfig", "'lr': (0.001, 0.01)", "start a fresh run")
def checkpoint_other_config(scratch):
    restore(checkpointed(scratch) / "step-0000002", lr=1e-2)


@bad_input("checkpoint", "resuming a checkpoint of another method", ValueError,
           "do not match this model's trainable parameters", "another model or method")
def checkpoint_other_method(scratch):
    from ftcourse.lora import LoRA, apply_lora
    restore(checkpointed(scratch) / "step-0000002", apply_lora(small_llama(), LoRA()))


@bad_input("checkpoint", "resume=True without a checkpoint folder", ValueError,
           "resume=True needs the checkpoint_dir")
def checkpoint_resume_without_folder(scratch):
    from ftcourse.train import TrainConfig, train
    train(small_llama(), EXAMPLES, TrainConfig(**RUN), resume=True, progress=False)


@bad_input("safety", "a checkpoint whose optimizer.pt carries pickled code", ValueError,
           "holds objects other than tensors", "refused for safety", "weights_only=True")
def checkpoint_pickle_payload(scratch):
    import hashlib

    path = checkpointed(scratch) / "step-0000002"
    torch.save({"optimizer": Payload(scratch / "payload-ran")}, path / "optimizer.pt")
    manifest = json.loads((path / "manifest.json").read_text())   # forge the manifest to match
    data = (path / "optimizer.pt").read_bytes()
    manifest["optimizer.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))
    try:
        restore(path)
    finally:
        assert not (scratch / "payload-ran").exists(), "the pickled code ran"


class Payload:
    """Unpickling this object would create `marker`: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---------------------------------------------------------------- the command line

@bad_input("cli", "a LoRA rank of 0 on the command line", CommandFailed, "exit 2",
           "argument --lora-r: must be >= 1, got 0")
def cli_rank_zero(scratch):
    run_command("finetune", "--method", "lora", "--lora-r", "0")


@bad_input("cli", "a batch size that is not a number", CommandFailed, "exit 2",
           "argument --batch-size: expected a whole number, got 'two'")
def cli_batch_size_text(scratch):
    run_command("finetune", "--method", "full", "--batch-size", "two")


@bad_input("cli", "a negative number of epochs", CommandFailed, "exit 2", "argument --epochs: must be > 0")
def cli_negative_epochs(scratch):
    run_command("finetune", "--method", "full", "--epochs", "-1")


@bad_input("cli", "an unknown method on the command line", CommandFailed, "exit 2",
           "argument --method: invalid choice: 'magic'")
def cli_unknown_method(scratch):
    run_command("finetune", "--method", "magic")


@bad_input("cli", "LoRA targets the model does not have", CommandFailed, "exit 2",
           "match no", "available names")
def cli_unknown_target(scratch):
    with mock.patch("ftcourse.evaluate.score_task", return_value=None):   # no time on scoring
        run_command("finetune", "--method", "lora", "--lora-targets", "q_proj,attn", "--no-progress")


@bad_input("cli", "a fine-tuning run predicted not to fit in memory", CommandFailed, "exit 2",
           "refused to start full fine-tuning", "peak", "To fit it:", "--method lora", "--batch-size",
           "pass --ignore-memory-check")
def cli_run_too_big(scratch):
    with mock.patch("ftcourse.memory.plan.available_memory", return_value=1_000_000):   # a 1 MB machine
        run_command("finetune", "--method", "full", "--no-progress")


@bad_input("adapter", "saving a PiSSA adapter on its own", ValueError, "PiSSA adapters",
           "wrong on the original base", "export_merged")
def adapter_pissa_saved_alone(scratch):
    from ftcourse.lora import LoRA, apply_lora, save_adapter

    config = LoRA(r=2, init="pissa")
    save_adapter(apply_lora(small_llama(), config), scratch, config)


# ---------------------------------------------------------------- export, serving, training jobs

@bad_input("export", "merging a prompt-tuned model into a plain model", ValueError,
           "only full fine-tuning, LoRA and QLoRA merge", "methods.save_trained")
def export_soft_prompt_merge(scratch):
    from ftcourse.export import merged_copy
    from ftcourse.prompts import PromptTuning

    merged_copy(PromptTuning(num_virtual_tokens=2).apply(small_llama(), tokenizer()))


@bad_input("export", "a GGUF file of a model whose LoRA layers are not merged", ValueError,
           "merge them first", "merged_copy", "write_lora_gguf")
def export_gguf_unmerged(scratch):
    from ftcourse.llamacpp import write_gguf
    from ftcourse.lora import LoRA, apply_lora

    write_gguf(apply_lora(small_llama(), LoRA()), tokenizer(), scratch / "model.gguf")


@bad_input("export", "a GGUF file of a model that is not Llama-family", ValueError,
           "Llama-family", "'gpt2'", "convert_hf_to_gguf.py")
def export_gguf_not_llama(scratch):
    from transformers import GPT2Config, GPT2LMHeadModel

    from ftcourse.llamacpp import write_gguf

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer()), n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=1, eos_token_id=2))
    write_gguf(model, tokenizer(), scratch / "model.gguf")


@bad_input("cli", "a GGUF type llama.cpp has but ftcourse does not write", CommandFailed, "exit 2",
           "Unknown GGUF type(s) ['Q4_K_M']", "F32, F16, Q8_0, Q4_0")
def cli_unknown_gguf_type(scratch):
    run_command("export", "--out", str(scratch), "--gguf", "Q4_K_M")


@bad_input("cli", "a served adapter without its name", CommandFailed, "exit 2", "write NAME=FOLDER")
def cli_serve_unnamed_adapter(scratch):
    run_command("serve", "--adapter", str(scratch))


@bad_input("serving", "a served model whose GGUF file does not exist", FileNotFoundError,
           "qa: no GGUF file", "ftcourse export")
def serve_missing_adapter_file(scratch):
    from ftcourse.serving import start_server

    start_server(write(scratch / "base.gguf", b"GGUF"), {"qa": scratch / "qa.gguf"}, n_ctx=128)


@bad_input("data", "a training job's data channel with two data files", FileNotFoundError,
           "SM_CHANNEL_TRAIN=", "holds 2 data files (a.jsonl, b.csv)", "exactly one")
def job_channel_two_files(scratch):
    from ftcourse.training_job import job_paths

    write(scratch / "a.jsonl", "{}")
    write(scratch / "b.csv", "instruction,response\n")
    job_paths({"SM_CHANNEL_TRAIN": str(scratch)})


# ---------------------------------------------------------------- evaluation

@bad_input("evaluate", "no pairs to judge (empty lists)", ValueError, "questions is empty", "xs is empty",
           "equal, non-zero length")
def judge_no_pairs(scratch):
    from ftcourse.evaluate import judge_both_orders

    judge_both_orders(small_llama(), tokenizer(), [], [], [])


@bad_input("evaluate", "answers to judge that do not pair up with the questions", ValueError,
           "the lengths differ (questions: 2, xs: 2, ys: 1)")
def judge_unpaired_answers(scratch):
    from ftcourse.evaluate import judge_both_orders

    judge_both_orders(small_llama(), tokenizer(), ["Where does Ada live?", "What is Bo's job?"],
                      ["Pelmora", "pilot"], ["Axbury"])


@bad_input("evaluate", "judge labels the tokenizer splits into several tokens", ValueError,
           "must differ in exactly one token", "'first': [' f', 'i'", "single letters or digits", "labels=")
def judge_multi_token_labels(scratch):
    from ftcourse.evaluate import judge_margins

    judge_margins(small_llama(), tokenizer(), ["Where does Ada live?"], ["Pelmora"], ["Axbury"],
                  labels=("first", "second"))


@bad_input("evaluate", "multiple-choice rows without their choices", ValueError,
           "no 'context' or no 'choices' field", "as_multiple_choice")
def choices_missing(scratch):
    from ftcourse.evaluate import score_choices

    score_choices(small_llama(), tokenizer(), [{"question": "Where does Ada live?", "answer": 0}])


@bad_input("evaluate", "too few answers of a kind for the multiple-choice questions asked", ValueError,
           "too few for 4 choices", "lower n_choices")
def too_few_choices(scratch):
    from ftcourse.data import as_multiple_choice

    as_multiple_choice([{"instruction": "What is 2 + 2?", "response": "4"},
                        {"instruction": "What is 3 + 3?", "response": "6"}], n_choices=4)


@bad_input("evaluate", "an lm-eval task run before its file is written", ValueError,
           "No task file ftcourse_qa.yaml", "write_generation_task")
def harness_task_missing(scratch):
    from ftcourse.evaluate.harness import run_harness

    run_harness(small_llama(), tokenizer(), scratch, ["ftcourse_qa"])


# ---------------------------------------------------------------- the docs table

def markdown_table() -> str:
    """The catalogue as the markdown table the book includes, with each entry's real message."""
    lines = ["| # | Area | Bad input | ftcourse answers with | The message |", "|---|---|---|---|---|"]
    for number, case in enumerate(CASES.values(), start=1):
        with tempfile.TemporaryDirectory() as scratch:
            message = observe(case, Path(scratch)).message.replace(scratch, "<dir>")
        # The same table on every machine: no checkout path, no hashes of float rounding.
        message = re.sub(r"\b[0-9a-f]{12}\.\.\.", "<sha256>...", message.replace(f"{ROOT}/", ""))
        kind = "a warning" if issubclass(case.expect, Warning) else (
            "exit status 2" if case.expect is CommandFailed else case.expect.__name__)
        shown = message.replace("|", "\\|").replace("\n", "<br>")
        lines.append(f"| {number} | {case.area} | {case.what} | {kind} | {shown} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    TABLE.write_text(markdown_table())
    print(f"{len(CASES)} bad inputs -> {TABLE.relative_to(ROOT)}", file=sys.stderr)
