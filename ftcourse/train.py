"""The one training loop. Every chapter trains through it; a method only decides what is trainable.

It runs on Accelerate, so the same loop runs on the CPU, one GPU, or several processes
(`accelerate launch`); tests/test_distributed.py proves two CPU processes (DDP over gloo) train
as one. Accelerate runs FSDP on GPUs only: an FSDP launch on the CPU trains as DDP, with a warning.
The loss of a step is the sum of per-item losses over the whole global batch (all micro-batches,
all processes) divided by the number of items, as TRL and transformers do: gradient accumulation
and data parallelism do not change the result, only the memory.
Checkpoints hold the trainable weights (safetensors), the optimizer and scheduler state and the
history; resuming from one continues exactly where the uninterrupted run would be. Each is written
into a temporary folder, flushed to disk and renamed, with a manifest of its files' sizes and
sha256 hashes: a killed run leaves whole checkpoints (and a `.tmp-` folder, ignored), and a resume
skips, with a warning, any whose files were damaged since. optimizer.pt loads with
weights_only=True: no pickled code runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ftcourse.chat import longest_sequence

# loss_fn(model, batch) -> (sum of per-item losses, number of items) for one micro-batch, and
# optionally a dict of other per-item sums to log as means (e.g. DPO's reward accuracy).
LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, ...]]
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "state.json")
MANIFEST = "manifest.json"                # {file: {"bytes": size, "sha256": hex}}, written last


@dataclass(frozen=True)
class TrainConfig:
    """How long and how fast to train. Give exactly one of `max_steps` and `epochs`."""

    max_steps: int | None = None          # optimizer steps
    epochs: float | None = None           # passes over the data, rounded up to whole steps
    batch_size: int = 16                  # examples per forward pass, per process
    grad_accum_steps: int = 1             # forward passes per optimizer step
    lr: float = 1e-3
    warmup_ratio: float = 0.05            # share of steps with a linear warm-up
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0             # AdamW, never on norms, biases or 1-D parameters
    max_grad_norm: float | None = 1.0
    seed: int = 0                         # data order and any randomness in the model
    eval_every: int = 0                   # steps between evaluations (0: at the end only)
    save_every: int = 0                   # steps between checkpoints (0: at the end only)

    def __post_init__(self) -> None:
        problems = []
        if (self.max_steps is None) == (self.epochs is None):
            problems.append("give exactly one of max_steps and epochs")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and not self.epochs > 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if problems:
            raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")

    def total_steps(self, num_examples: int, num_processes: int = 1) -> int:
        """Optimizer steps of the run for a dataset of `num_examples`."""
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum_steps * num_processes
        return max(1, math.ceil(self.epochs * num_examples / per_step))


@dataclass
class TrainResult:
    """What a run leaves behind: per-step history, evaluations, and speed."""

    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    def plot(self, ax=None, **kwargs):
        """The loss curve (and evaluations, if any); see `ftcourse.plots.plot_history`."""
        from ftcourse.plots import plot_history
        return plot_history(self, ax=ax, **kwargs)


# ---------------------------------------------------------------- losses and batches

def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32 if it is in a narrower float (bf16, fp16): losses over a vocabulary need the
    range. A float64 `x` stays float64 (`.float()` would round it down)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy over positions whose label is not -100, and their count."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    if "attention_mask" not in inputs and "position_ids" in inputs:
        inputs["use_cache"] = False   # transformers separates packed rows by position only without a cache
    logits = model(**inputs).logits
    labels = batch["labels"][:, 1:]                      # token t predicts label t + 1
    logits = logits[:, :-1]
    loss_sum = nn.functional.cross_entropy(at_least_float32(logits.reshape(-1, logits.size(-1))),
                                           labels.reshape(-1), ignore_index=-100, reduction="sum")
    return loss_sum, (labels != -100).sum()


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label_{t+1} | tokens <= t) per position, (B, T-1); 0 where the label is -100."""
    labels = labels[:, 1:]
    mask = labels != -100
    logprobs = torch.log_softmax(at_least_float32(logits[:, :-1]), dim=-1)
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def pad_batch(examples: Sequence[dict[str, Sequence[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad `input_ids` (with `pad_id`) and `labels` (with -100) to the longest example.

    Packed rows (examples with `position_ids`) get their positions padded with 0 and no
    attention mask: transformers then keeps the packed examples apart by their positions.
    """
    length = max(len(ex["input_ids"]) for ex in examples)
    packed = "position_ids" in examples[0]

    def padded(rows: list[Sequence[int]], value: int) -> Tensor:
        # Pad the lists, then convert once: ~5x faster than copying row by row into a tensor.
        return torch.tensor([[*row, *[value] * (length - len(row))] for row in rows], dtype=torch.long)

    input_ids = [ex["input_ids"] for ex in examples]
    second = [ex["position_ids"] for ex in examples] if packed else [[1] * len(ids) for ids in input_ids]
    return {"input_ids": padded(input_ids, pad_id),
            "labels": padded([ex.get("labels", ex["input_ids"]) for ex in examples], -100),
            ("position_ids" if packed else "attention_mask"): padded(second, 0)}   # mask or positions


def example_order(num_examples: int, num_needed: int, seed: int) -> list[int]:
    """Example indices for the whole run: a fresh seeded permutation for every epoch."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < num_needed:
        order += torch.randperm(num_examples, generator=generator).tolist()
    return order[:num_needed]


def lr_lambda(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on 1-D ones (norms, biases)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("The model has no trainable parameters (every requires_grad is False). "
                         "Apply a fine-tuning method, or unfreeze parameters, before training.")
    if empty := [name for name, p in named if p.is_meta]:
        raise ValueError(f"{len(empty)} trainable tensor(s) are on the meta device (first: {empty[0]}): "
                         "they have a shape but no values, as in a model built under init_empty_weights. "
                         "Load the weights first (from_pretrained, or load_state_dict(..., assign=True)).")
    if half := [name for name, p in named if p.dtype == torch.float16]:
        raise ValueError(f"{len(half)} trainable tensor(s) are float16 (first: {half[0]}). This loop has no "
                         "loss scaling, so small gradients and AdamW's second moments underflow to 0 in "
                         "float16. Train float32 weights (model.float(); adapters are float32 already) "
                         "or bfloat16 ones.")
    params = [p for _, p in named]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=(0.9, 0.95))


# ---------------------------------------------------------------- checkpoints

def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name: all a checkpoint needs besides the frozen base."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: Path, model: nn.Module, optimizer, scheduler, step: int,
                    config: TrainConfig, result: TrainResult) -> Path:
    """Write `directory/step-N/` atomically: into a temporary folder, flushed to disk, then renamed.

    A crash leaves a whole checkpoint or a `.tmp-step-N` leftover that resuming ignores; manifest.json,
    written last, records each file's size and sha256, so a later resume can check the files are intact.
    """
    from safetensors.torch import save_file

    final = directory / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = directory / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    state = {"step": step, "config": asdict(config), "history": result.history,
             "evals": result.evals, "seconds": result.seconds, "tokens": result.tokens}
    (tmp / "state.json").write_text(json.dumps(state))
    manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in CHECKPOINT_FILES}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # Without fsync the rename can reach the disk before the data: after a power cut the folder
    # would exist with empty or partial files.
    for name in (*CHECKPOINT_FILES, MANIFEST):
        _fsync(tmp / name)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)      # a checkpoint of the same step from an earlier run
    os.replace(tmp, final)
    _fsync(directory)                             # make the rename itself durable
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The intact checkpoint with the highest step in `directory`, or None.

    `.tmp-step-N` leftovers of interrupted saves never count; a damaged `step-N` folder is skipped
    with a warning, so a resume falls back to the checkpoint before it.
    """
    directory = Path(directory)
    for leftover in sorted(directory.glob(f".tmp-{CHECKPOINT_PREFIX}*")):
        warnings.warn(f"Ignoring {leftover}: a checkpoint whose save was interrupted (half-written). "
                      "The run resumes from the newest complete checkpoint and overwrites it when it "
                      "saves that step.", stacklevel=2)
    found = [path for path in directory.glob(f"{CHECKPOINT_PREFIX}*")
             if path.is_dir() and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
    for path in sorted(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)),
                       reverse=True):
        if not (problems := checkpoint_problems(path)):
            return path
        warnings.warn(f"Skipping damaged checkpoint {path}: {'; '.join(problems)}. Falling back to the "
                      f"checkpoint before it, if any. The damaged folder is left on disk, not deleted: "
                      f"inspect or delete it (a resumed run replaces it when it saves that step again).",
                      stacklevel=2)
    return None


def checkpoint_problems(path: str | Path) -> list[str]:
    """What is wrong with the files of checkpoint `path`, checked against its manifest; [] if intact.

    The manifest catches accidents (a crash, a full disk, a bad copy), not tampering: anyone can
    rewrite it. Against a malicious optimizer.pt, `load_checkpoint` relies on weights_only=True.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"{MANIFEST} is missing (files were deleted since the save, or an older ftcourse "
                "wrote this checkpoint)"]
    except (OSError, ValueError) as error:
        return [f"{MANIFEST} is unreadable ({error})"]
    problems = [f"{name} is not listed in {MANIFEST}" for name in CHECKPOINT_FILES if name not in manifest]
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif (size := file.stat().st_size) != expected["bytes"]:
            kind = "truncated" if size < expected["bytes"] else "too long"
            problems.append(f"{name} is {kind}: expected {expected['bytes']} bytes, got {size}")
        elif (digest := _sha256(file)) != expected["sha256"]:
            problems.append(f"{name} is corrupt: sha256 hash mismatch (expected "
                            f"{expected['sha256'][:12]}..., got {digest[:12]}...)")
    return problems


def load_checkpoint(path: str | Path, model: nn.Module, optimizer, scheduler, config: TrainConfig,
                    result: TrainResult) -> int:
    """Restore a checkpoint into the model, optimizer, scheduler and result; return its step.

    Its files are read and checked before anything is restored: a damaged or unsafe one changes nothing.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if problems := checkpoint_problems(path):
        raise ValueError(f"Checkpoint {path} is damaged: {'; '.join(problems)}. Resume from an earlier "
                         f"{CHECKPOINT_PREFIX}N folder in {path.parent}, or delete this one: "
                         "train(resume=True) skips damaged checkpoints and takes the newest intact one.")
    state = json.loads((path / "state.json").read_text())
    if state["config"] != asdict(config):
        changed = {k: (v, asdict(config)[k]) for k, v in state["config"].items() if asdict(config)[k] != v}
        raise ValueError(f"Checkpoint {path} was written with a different TrainConfig "
                         f"(field: (saved, now)) {changed}. Resume with the same config, or start "
                         f"a fresh run in another checkpoint_dir.")
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(f"Checkpoint {path} holds trainable weights {sorted(set(weights) ^ expected)[:5]} "
                         "that do not match this model's trainable parameters; was it made with "
                         "another model or method?")
    try:
        extra = torch.load(path / "optimizer.pt", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path / 'optimizer.pt'} holds objects other than tensors, so it was not "
                         "written by ftcourse; it is refused for safety (torch.load with weights_only=True "
                         "runs no code from the file). Delete this checkpoint, or resume from one you "
                         "wrote yourself.") from error
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    result.history, result.evals = state["history"], state["evals"]
    result.seconds, result.tokens = state["seconds"], state["tokens"]
    return state["step"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    # Flush a file's data, or a folder's entries, to the disk. Windows flushes only handles opened
    # for writing and cannot open a folder, so there the folder flush is skipped.
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the loop

def train(model: nn.Module, data: Sequence[dict[str, Any]], config: TrainConfig, *,
          loss_fn: LossFn = causal_lm_loss, collate: Callable | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, description: str = "train") -> TrainResult:
    """Train the parameters of `model` that require grad on `data`; return the history.

    Args:
        model: any torch module; frozen parameters stay frozen.
        data: tokenized examples; the default `collate` pads `input_ids` / `labels` lists.
        config: steps, batch, learning rate, schedule, seed.
        loss_fn: (model, batch) -> (summed loss, item count) for one micro-batch.
        eval_fn: called with the model in eval mode every `config.eval_every` steps and at the end.
        checkpoint_dir: where `step-N/` checkpoints go; `resume=True` continues from the latest.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if len(data) == 0:
        raise ValueError("train() got no examples; check the dataset and its split.")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from.")
    require_within_positions(model, data)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    _warn_if_fsdp_is_off(accelerator)
    torch.manual_seed(config.seed)
    collate = collate or partial(pad_batch, pad_id=_pad_id(model))
    world, rank = accelerator.num_processes, accelerator.process_index
    total = config.total_steps(len(data), world)
    per_process = config.batch_size * config.grad_accum_steps
    order = example_order(len(data), total * per_process * world, config.seed)

    if accelerator.is_main_process and loss_fn is causal_lm_loss:
        _preflight(model, data, config, accelerator)
    model.train()
    optimizer = make_optimizer(model, config)
    warmup = math.ceil(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, total=total, warmup=warmup, schedule=config.schedule))
    result, start = TrainResult(), 0
    if resume and (path := latest_checkpoint(checkpoint_dir)) is not None:
        start = load_checkpoint(path, model, optimizer, scheduler, config, result)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]

    bar = tqdm(range(start, total), desc=description, disable=not (progress and accelerator.is_main_process),
               initial=start, total=total, mininterval=1.0)
    began = time.perf_counter()
    for step in bar:
        mine = order[(step * world + rank) * per_process:(step * world + rank + 1) * per_process]
        batches = [collate([data[i] for i in mine[start:start + config.batch_size]])
                   for start in range(0, per_process, config.batch_size)]
        sums, tokens = _accumulate(wrapped, accelerator, loss_fn, batches)
        # Gradients hold summed losses, averaged over processes by DDP; make them a global mean.
        names = sorted(sums)
        totals = dict(zip(names, accelerator.reduce(torch.stack([sums[n] for n in names]).to(
            accelerator.device), "sum").cpu().tolist()))
        count = totals.pop("count")
        if count == 0:
            raise ValueError(f"Step {step + 1} has no items to learn from (every label is -100); "
                             "check the label masking of the data.")
        for p in params:
            if p.grad is not None:
                p.grad.mul_(world / count)
        grad_norm = (accelerator.clip_grad_norm_(params, config.max_grad_norm)
                     if config.max_grad_norm is not None else torch.tensor(float("nan")))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        result.tokens += tokens * world
        record = {"step": step + 1, **{name: value / count for name, value in totals.items()},
                  "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
        result.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        done = step + 1 == total
        if eval_fn is not None and (done or (config.eval_every and (step + 1) % config.eval_every == 0)):
            result.evals.append({"step": step + 1, **_evaluate(accelerator.unwrap_model(wrapped), eval_fn)})
        if checkpoint_dir is not None and accelerator.is_main_process and (
                done or (config.save_every and (step + 1) % config.save_every == 0)):
            result.seconds += time.perf_counter() - began
            began = time.perf_counter()
            save_checkpoint(Path(checkpoint_dir), accelerator.unwrap_model(wrapped), optimizer,
                            scheduler, step + 1, config, result)
    result.seconds += time.perf_counter() - began
    bar.close()
    model.eval()
    return result


def _accumulate(model: nn.Module, accelerator: Any, loss_fn: LossFn,
                batches: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], int]:
    """Forward and backward over the micro-batches of one step; return the summed loss, item
    count and extra metrics, and the number of tokens seen. DDP syncs only on the last one."""
    sums: dict[str, Tensor] = {}
    tokens = 0
    for index, batch in enumerate(batches):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        mask = batch.get("attention_mask")
        tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        last = index == len(batches) - 1
        with accelerator.autocast(), (accelerator.no_sync(model) if not last else nullcontext()):
            loss_sum, count, *extra = loss_fn(model, batch)
            accelerator.backward(loss_sum)
        for name, value in {"loss": loss_sum, "count": count, **(extra[0] if extra else {})}.items():
            sums[name] = sums.get(name, torch.zeros(())) + value.detach().float().cpu()
    return sums, tokens


def _warn_if_fsdp_is_off(accelerator: Any) -> None:
    # `accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP, but Accelerate turns FSDP on
    # only for several processes on GPUs (or other accelerators); elsewhere it says nothing and
    # falls back, on the CPU to DDP, so this says it instead (book/scaling.ipynb).
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and accelerator.distributed_type != DistributedType.FSDP:
        warnings.warn(f"FSDP was asked for (ACCELERATE_USE_FSDP=true), but Accelerate did not turn it "
                      f"on: it shards only over several GPUs or other accelerators, not CPU processes. "
                      f"This run trains as {accelerator.distributed_type.value} with "
                      f"{accelerator.num_processes} process(es): the same result, memory not sharded.",
                      stacklevel=3)


def _evaluate(model: nn.Module, eval_fn: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = eval_fn(model)
    model.train()
    return metrics


def _preflight(model: nn.Module, data: Sequence[dict[str, Any]], config: TrainConfig,
               accelerator: Any) -> None:
    # Warn before a language-model run that the memory model predicts will not fit (ftcourse.memory).
    from ftcourse.memory import Setup, preflight
    from ftcourse.params import config_value

    model_config = getattr(model, "config", None)
    if model_config is None or config_value(model_config, "intermediate_size") is None:
        return                                  # not a Llama-family model: nothing to predict
    lengths = {len(example["input_ids"]) for example in data}
    dtype = next(model.parameters()).dtype
    precision = ("bf16-mixed" if accelerator.mixed_precision == "bf16"
                 else "bf16" if dtype == torch.bfloat16 else "fp32")
    setup = Setup(precision=precision, batch_size=min(config.batch_size, len(data)), seq_len=max(lengths),
                  padding=len(lengths) > 1,
                  gradient_checkpointing=bool(getattr(getattr(model, "base_model", model),
                                                      "is_activation_checkpointing", False)))
    preflight(model, setup, device=accelerator.device)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position scheme was trained for, if its config says."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def require_within_positions(model: nn.Module, examples: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError if an example is longer than the model's positions (less its virtual tokens,
    if any): a Llama runs past them without an error (RoPE extends) on positions it never saw."""
    limit = max_positions(model)
    if limit is None:
        return
    limit -= getattr(model, "num_virtual_tokens", 0)
    if too_long := [i for i, example in enumerate(examples) if longest_sequence(example) > limit]:
        first = too_long[0]
        raise ValueError(f"{len(too_long)} example(s) (first: {first}, {longest_sequence(examples[first])} "
                         f"tokens) are longer than the model's {limit} positions; a Llama would run past "
                         "them without an error (RoPE extends) on positions it never saw. Leave them out "
                         "(ftcourse.chat.leave_out_too_long) or shorten them.")


def _pad_id(model: nn.Module) -> int:
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad_id is None:
        raise ValueError("The model's config has no pad_token_id; set model.config.pad_token_id "
                         "(distinct from eos) or pass collate= to train().")
    return pad_id
