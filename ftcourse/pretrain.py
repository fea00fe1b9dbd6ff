"""Pretraining the embedded base model: a tokenizer and a tiny Llama, from a seed, on the world.

`ftcourse pretrain` runs `pretrain()`: generate the corpus, train a byte-level BPE tokenizer on
it, initialise a Hugging Face Llama, train it with the course's own loop on packed documents,
measure fact recall and reading every `eval_every` steps and held-out loss at the end, and write
a checkpoint (safetensors, config, tokenizer, loss and measurement history, model card). The
checkpoint in `ftcourse/assets/tiny-llama` is this command's output.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftcourse.chat import BOS, CHAT_TEMPLATE, EOS, PAD, ROLE_TOKENS
from ftcourse.data import default_world
from ftcourse.data.corpus import pretraining_documents
from ftcourse.data.reading import chance_level, reading_probes
from ftcourse.data.world import recall_probes
from ftcourse.evaluate import perplexity, recall_accuracy
from ftcourse.models import EMBEDDED_MODEL
from ftcourse.train import TrainConfig, train


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining run; the defaults produce the shipped model."""

    seed: int = 0
    max_steps: int = 3600
    batch_size: int = 16          # sequences of `seq_len` tokens per step
    seq_len: int = 256
    lr: float = 3e-3
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    eval_every: int = 300       # steps between measurements of recall and reading

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1, got {getattr(self, name)}"
                    for name in ("max_steps", "batch_size", "seq_len", "num_layers", "eval_every")
                    if getattr(self, name) < 1]
        if self.hidden_size % 64:
            problems.append(f"hidden_size must be a multiple of 64 (the 4-bit block size), "
                            f"got {self.hidden_size}")
        if self.vocab_size < 300:
            problems.append(f"vocab_size must be >= 300 (256 bytes + special tokens), got {self.vocab_size}")
        if problems:
            raise ValueError("Invalid PretrainConfig: " + "; ".join(problems) + ".")


TOKENIZER_DOCUMENTS = 20_000   # documents the tokenizer is trained on
HELD_OUT_DOCUMENTS = 2_000     # documents for the held-out loss
TOKENS_PER_DOCUMENT = 25       # below the mean (about 37), so the corpus covers every step
READING_PROBES = 200           # held-out strangers the reading measurements ask about


def progress_probes(world: Any, seed: int) -> dict[str, list[tuple[str, str]]]:
    """What pretraining measures as it goes: recall of the world's facts, and reading a fact
    about a held-out stranger with its passage in the notes and without it."""
    return {"fact recall": recall_probes(world),
            "reading, passage in context": reading_probes(world, READING_PROBES, seed),
            "reading, passage absent": reading_probes(world, READING_PROBES, seed, passage=False)}


def llama_config(config: PretrainConfig, tokenizer: Any):
    """A small Llama: grouped key/value heads (2 per 4 query heads), SwiGLU, tied embeddings."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=3 * config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.hidden_size // 32, num_key_value_heads=config.hidden_size // 64,
        max_position_embeddings=2 * config.seq_len, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def train_bpe(texts: list[str], vocab_size: int, specials: list[str]):
    """A byte-level BPE (a `tokenizers.Tokenizer`) trained on `texts`, `specials` first in its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return bpe


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer with distinct pad / bos / eos, role tokens and a chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(texts, vocab_size, [PAD, BOS, EOS, *ROLE_TOKENS])
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bpe.token_to_id(BOS))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS,
                                        pad_token=PAD, additional_special_tokens=list(ROLE_TOKENS))
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def pack_documents(tokenizer: Any, documents: list[str], seq_len: int) -> list[dict[str, list[int]]]:
    """Documents as <bos> text <eos>, concatenated and cut into `seq_len` blocks. The last block
    is padded (labels -100) rather than dropped, so every token is trained on."""
    stream: list[int] = []
    for ids in tokenizer(documents)["input_ids"]:  # each starts with <bos>
        stream += ids + [tokenizer.eos_token_id]
    blocks = []
    for start in range(0, len(stream), seq_len):
        block = stream[start:start + seq_len]
        pad = seq_len - len(block)
        blocks.append({"input_ids": block + [tokenizer.pad_token_id] * pad,
                       "labels": block + [-100] * pad})
    return blocks


def machine_kind() -> str:
    """The CPU a run used and the vector instructions torch chose on it: the same weights come
    out bit for bit only on the same kind (the rounding of matmuls depends on both)."""
    import torch

    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("model name")), name)
    return f"{name}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


@dataclass
class PretrainRun:
    """A finished pretraining run: the model, its tokenizer, the loss history and the summary."""

    model: Any
    tokenizer: Any
    result: Any
    summary: dict[str, Any]


def pretrain(out_dir: str | Path | None = None, config: PretrainConfig = PretrainConfig(), *,
             tokenizer: Any = None, progress: bool = True, command: str | None = None) -> PretrainRun:
    """Pretrain a tiny Llama on the world; save it to `out_dir` if given.

    Args:
        tokenizer: reuse this tokenizer instead of training one (e.g. the embedded model's).
        command: the command line to record in the model card.
    """
    import torch
    from transformers import LlamaForCausalLM

    began = time.time()
    world = default_world()
    if tokenizer is None:
        tokenizer = train_tokenizer(pretraining_documents(world, TOKENIZER_DOCUMENTS, config.seed + 2),
                                    config.vocab_size)
    num_documents = math.ceil(config.max_steps * config.batch_size * config.seq_len / TOKENS_PER_DOCUMENT)
    blocks = pack_documents(tokenizer, pretraining_documents(world, num_documents, config.seed),
                            config.seq_len)
    held_out = pack_documents(tokenizer, pretraining_documents(world, HELD_OUT_DOCUMENTS, config.seed + 1),
                              config.seq_len)

    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(llama_config(config, tokenizer))
    initial_loss = math.log(perplexity(model, held_out))
    probes = progress_probes(world, config.seed)
    train_config = TrainConfig(max_steps=config.max_steps, batch_size=config.batch_size, lr=config.lr,
                               warmup_ratio=0.02, weight_decay=0.1, seed=config.seed,
                               eval_every=config.eval_every)
    result = train(model, blocks, train_config, progress=progress, description="pretrain",
                   eval_fn=lambda m: {name: float(recall_accuracy(m, tokenizer, pairs).mean())
                                      for name, pairs in probes.items()})
    final = result.evals[-1]
    summary = {
        "command": command or f"ftcourse pretrain --out {out_dir}",
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": config.max_steps * config.batch_size * config.seq_len,
        "wall_seconds": round(time.time() - began, 1),
        "train_loss": result.final_loss,
        "held_out_loss": math.log(perplexity(model, held_out)),
        "held_out_loss_at_init": initial_loss,
        "fact_recall": final["fact recall"],
        "facts": len(probes["fact recall"]),
        "reading_in_context": final["reading, passage in context"],
        "reading_absent": final["reading, passage absent"],
        "reading_probes": READING_PROBES,
        "machine": machine_kind(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        save_base_model(Path(out_dir), model, tokenizer, summary, result.history, result.evals)
    return PretrainRun(model, tokenizer, result, summary)


def recorded_history(model_dir: str | Path | None = None) -> dict[str, Any]:
    """The summary, per-step training loss and the measurements every `eval_every` steps
    recorded when a checkpoint was pretrained."""

    return json.loads((Path(model_dir or EMBEDDED_MODEL) / "pretrain_history.json").read_text())


def save_base_model(out_dir: Path, model: Any, tokenizer: Any, summary: dict[str, Any],
                    history: list[dict[str, float]], evals: list[dict[str, float]]) -> None:
    """Model (safetensors) + config + tokenizer + loss and measurement history + a model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "pretrain_history.json").write_text(json.dumps(
        {"summary": summary, "loss": [round(h["loss"], 5) for h in history], "evals": evals}, indent=1))
    (out_dir / "MODEL_CARD.md").write_text(model_card(summary))


def model_card(summary: dict[str, Any]) -> str:
    """The model card: how the model was made and what it measured, from the run itself."""
    config, probes = summary["config"], summary["reading_probes"]
    return f"""# tiny-llama: the ftcourse embedded base model

A {summary['parameters']:,}-parameter decoder in the Hugging Face Llama architecture
({config['num_layers']} layers, hidden size {config['hidden_size']}, grouped key/value heads,
SwiGLU, tied embeddings, vocabulary {config['vocab_size']} byte-level BPE tokens), pretrained from
random initialisation on the synthetic world of `ftcourse.data` by the course's own training loop.

| | |
|---|---|
| command | `{summary['command']}` |
| seed | {config['seed']} |
| steps x batch x sequence | {config['max_steps']} x {config['batch_size']} x {config['seq_len']} tokens |
| training tokens | {summary['train_tokens']:,} |
| wall time | {summary['wall_seconds']:.0f} s on {summary['threads']} CPU threads |
| machine | {summary['machine']} |
| software | torch {summary['torch']}, Python {summary['python']} |
| held-out loss (nats/token) | {summary['held_out_loss']:.4f} |
| held-out loss at initialisation | {summary['held_out_loss_at_init']:.4f} |
| fact recall, pretraining phrasing | {summary['fact_recall']:.1%} of {summary['facts']} facts |
| reading, passage in context | {summary['reading_in_context']:.1%} of {probes} held-out strangers |
| reading, passage absent (chance {chance_level():.1%}) | {summary['reading_absent']:.1%} of {probes} |

Special tokens: `<pad>`, `<bos>`, `<eos>` are distinct (pad == eos would stop a model learning
to stop). The chat template (`<|user|> ... <|end|><|assistant|> ... <eos>`) is never seen in
pretraining: the base model continues text but does not follow instructions until fine-tuned.
It does read its context: a fifth of the corpus is notes about strangers followed by their facts
asked again (`ftcourse.data.reading`), so given a passage it finds the fact in it.
`pretrain_history.json` holds the training-loss curve and the measurements every
{config['eval_every']} steps. The command above, run on a machine of the same kind (the machine
row: the CPU and the vector instructions torch chose) with the same torch, writes the same
weights bit for bit; another kind rounds some matmuls differently and drifts from them.
"""
