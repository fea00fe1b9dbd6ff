"""The one training loop. Every chapter trains through it; a method only decides what is trainable.

It runs on Accelerate, so the same loop runs on the CPU, one GPU, or several processes
(`accelerate launch`); tests/test_distributed.py proves two CPU processes (DDP over gloo) train
as one. Accelerate runs FSDP on GPUs only: an FSDP launch on the CPU trains as DDP, with a warning.
The loss of a step is the sum of per-item losses over the whole global batch (all micro-batches,
all processes) divided by the number of items, as TRL and transformers do: gradient accumulation
and data parallelism do not change the result, only the memory.
A run can save checkpoints and resume from the newest intact one to the same result
(`ftcourse.checkpoints`). Whether a run fits in memory is its caller's question, asked before it
starts (`ftcourse.memory.plan_run`): the loop trains whatever it is given.
"""

from __future__ import annotations

import math
import os
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

from ftcourse.batching import (
    LossFn,
    causal_lm_loss,
    default_device,
    evaluating,
    pad_batch,
    pad_id_of,
    padding_free_batch,
    require_within_positions,
    tokens_of,
)
from ftcourse.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from ftcourse.plots import plot_history

# The optimizers a run can use, named as in ftcourse.memory.OPTIMIZERS: one AdamW update (betas,
# weight decay groups, schedule), with fp32 moments, or with both moments stored in 8 bits,
# block-wise quantized (Dettmers et al. 2022, arXiv:2110.02861).
TRAIN_OPTIMIZERS = {"adamw": "torch.optim.AdamW", "adamw-8bit": "bitsandbytes.optim.AdamW8bit"}


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
    optimizer: Literal["adamw", "adamw-8bit"] = "adamw"   # see TRAIN_OPTIMIZERS
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
        if self.optimizer not in TRAIN_OPTIMIZERS:
            known = ", ".join(f"{name!r} ({cls})" for name, cls in TRAIN_OPTIMIZERS.items())
            problems.append(f"optimizer must be one of {known}, got {self.optimizer!r}")
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
        return plot_history(self, ax=ax, **kwargs)


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


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (`config.optimizer`: torch's, or bitsandbytes' 8-bit one) over the trainable
    parameters; no weight decay on 1-D ones (norms, biases)."""
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
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adamw-8bit":
        import bitsandbytes as bnb  # imported here: only this optimizer needs it

        return bnb.optim.AdamW8bit(groups, lr=config.lr, betas=(0.9, 0.95))
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


# ---------------------------------------------------------------- the loop

def train(model: nn.Module, data: Sequence[dict[str, Any]], config: TrainConfig, *,
          loss_fn: LossFn = causal_lm_loss, collate: Callable | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, description: str = "train") -> TrainResult:
    """Train the parameters of `model` that require grad on `data`; return the history.

    Args:
        model: any torch module; frozen parameters stay frozen.
        data: tokenized examples; the default collate (`default_collate`) packs or pads their
            `input_ids` / `labels` lists.
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
    accelerator = Accelerator(cpu=default_device().type == "cpu")
    _warn_if_fsdp_is_off(accelerator)
    torch.manual_seed(config.seed)
    collate = collate or default_collate(model, loss_fn)
    world, rank = accelerator.num_processes, accelerator.process_index
    total = config.total_steps(len(data), world)
    per_process = config.batch_size * config.grad_accum_steps
    order = example_order(len(data), total * per_process * world, config.seed)

    model.train()
    optimizer = make_optimizer(model, config)
    warmup = math.ceil(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, total=total, warmup=warmup, schedule=config.schedule))
    result, start = TrainResult(), 0
    if resume and (path := latest_checkpoint(checkpoint_dir)) is not None:
        state = load_checkpoint(path, model, optimizer, scheduler, asdict(config))
        start, result.history, result.evals = state["step"], state["history"], state["evals"]
        result.seconds, result.tokens = state["seconds"], state["tokens"]
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]

    bar = tqdm(range(start, total), desc=description, disable=not (progress and accelerator.is_main_process),
               initial=start, total=total, mininterval=1.0)
    began = time.perf_counter()
    for step in bar:
        mine = order[(step * world + rank) * per_process:(step * world + rank + 1) * per_process]
        sums, tokens = _accumulate(wrapped, accelerator, loss_fn, collate, [data[i] for i in mine],
                                   config.batch_size)
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
            with evaluating(accelerator.unwrap_model(wrapped)) as unwrapped:
                result.evals.append({"step": step + 1, **eval_fn(unwrapped)})
        if checkpoint_dir is not None and accelerator.is_main_process and (
                done or (config.save_every and (step + 1) % config.save_every == 0)):
            result.seconds += time.perf_counter() - began
            began = time.perf_counter()
            save_checkpoint(Path(checkpoint_dir), accelerator.unwrap_model(wrapped), optimizer, scheduler,
                            {"step": step + 1, "config": asdict(config), "history": result.history,
                             "evals": result.evals, "seconds": result.seconds, "tokens": result.tokens})
    result.seconds += time.perf_counter() - began
    bar.close()
    model.eval()
    return result


def default_collate(model: nn.Module, loss_fn: LossFn) -> Callable:
    """How `train` batches examples unless told: padding-free rows for the next-token loss of a
    model that keeps packed examples apart (same loss, less padding to compute), padded rows
    for anything else."""
    padding_free = loss_fn is causal_lm_loss and keeps_packed_rows_apart(model)
    return partial(padding_free_batch if padding_free else pad_batch, pad_id=pad_id_of(model))


# The transformers architectures that keep the examples of a packed row apart by their restarting
# positions, each tested against padded rows (tests/test_train.py). Not every one does: OPT counts
# its positions from the attention mask, so a packed row would run past them.
PACKED_ROW_MODEL_TYPES = frozenset({"gemma", "gemma2", "gpt2", "gpt_neox", "llama", "mistral", "olmo2",
                                    "phi3", "qwen2", "qwen3", "smollm3"})


def keeps_packed_rows_apart(model: nn.Module) -> bool:
    """Whether `model` is a transformers model of an architecture in `PACKED_ROW_MODEL_TYPES`. A
    wrapper (soft prompts, a peft model) or a model of one's own is not assumed to keep rows apart."""
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and model.config.model_type in PACKED_ROW_MODEL_TYPES


def _accumulate(model: nn.Module, accelerator: Any, loss_fn: LossFn, collate: Callable,
                examples: list[dict[str, Any]], batch_size: int) -> tuple[dict[str, Tensor], int]:
    """Forward and backward over one step's examples, `batch_size` at a time; return the summed
    loss, item count and extra metrics, and the examples' tokens. DDP syncs only on the last one."""
    sums: dict[str, Tensor] = {}
    batches = [collate(examples[start:start + batch_size]) for start in range(0, len(examples), batch_size)]
    for index, batch in enumerate(batches):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        last = index == len(batches) - 1
        with accelerator.autocast(), (accelerator.no_sync(model) if not last else nullcontext()):
            loss_sum, count, *extra = loss_fn(model, batch)
            accelerator.backward(loss_sum)
        for name, value in {"loss": loss_sum, "count": count, **(extra[0] if extra else {})}.items():
            sums[name] = sums.get(name, torch.zeros(())) + value.detach().float().cpu()
    return sums, sum(map(tokens_of, examples))


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
