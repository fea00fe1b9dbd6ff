"""Training throughput benchmark: our loop against transformers' `Trainer` and TRL's `SFTTrainer`.

    python benchmarks/train_throughput.py            # 20 steps of batch 16, 5 interleaved repeats, ~3 min
    python benchmarks/train_throughput.py --quick    # 2 steps of batch 4, once, no memory (for the tests)

All three fully fine-tune a fresh copy of the embedded tiny model (`load_base(profile="tiny")`,
fp32) on the same token lists: the "instructions" task tokenized once by `tokenize_instructions`
(prompt masked; tests/test_sft.py proves TRL tokenizes it the same), in the same order (our
loop's seeded order, given to the libraries with a sequential sampler), the same examples in
every batch, each side padding-free as it does it (ours packs a batch into rows of its longest
example, `ftcourse.batching.padding_free_batch`; transformers' `DataCollatorWithFlattening` and
TRL's `padding_free=True` flatten it into one row; the examples of every batch are checked equal
before timing), with the same optimizer (torch AdamW, our betas, no weight decay, lr 1e-3, cosine
schedule, clipping at 1) and no evaluation, saving, logging or progress bar. Tokens/s counts the
examples' tokens over the training loop's time: our `TrainResult.seconds`, the libraries'
on_train_begin to on_train_end. Goal: ours >= 1.0x each library's tokens/s.
Model FLOPs utilisation (MFU): our loop's 6·N·tokens/s (N: every parameter; forward and
backward) over the fp32 matmul peak of this machine at the same thread count, a 1024 x 1024
matmul measured in the same run; goal 0.30, at the benchmarks' thread count and at one thread per
core. Peak memory (full runs only, no goal): `ftcourse.memory.measure_peak` (torch's profiler) of
a 3-step run of each side.

Where they still differ: TRL also computes each token's entropy and accuracy for its logs every
step (no option turns that off) and takes log-probs through transformers' fused LM head; the
libraries' cosine warm-up starts at lr 0, ours at lr / warmup steps.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from comparison import Comparison, command_line, interleaved, median, set_threads, spread
from torch import nn

from ftcourse.batching import example_spans, padding_free_batch
from ftcourse.data import load_task
from ftcourse.memory import measure_peak
from ftcourse.models import load_base
from ftcourse.sft import tokenize_instructions
from ftcourse.train import TrainConfig, example_order, make_optimizer, train

GOAL = 1.0
MFU_GOAL = 0.30
LIBRARIES = {"trainer": "transformers Trainer", "sft_trainer": "TRL SFTTrainer"}
Examples = list[dict[str, list[int]]]


def library_trainer(kind: str, model: nn.Module, tokenizer: Any, ordered: Examples, config: TrainConfig,
                    output_dir: str, callbacks: list[Any]) -> Any:
    """A `Trainer` or `SFTTrainer` set up to do what `ftcourse.train.train(model, ..., config)` does."""
    import datasets
    from transformers import DataCollatorWithFlattening, PrinterCallback, Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    beta1, beta2 = make_optimizer(model, config).defaults["betas"]
    common = dict(output_dir=output_dir, per_device_train_batch_size=config.batch_size,
                  max_steps=config.max_steps, learning_rate=config.lr, lr_scheduler_type=config.schedule,
                  warmup_steps=math.ceil(config.warmup_ratio * config.max_steps), optim="adamw_torch",
                  adam_beta1=beta1, adam_beta2=beta2, weight_decay=config.weight_decay,
                  max_grad_norm=config.max_grad_norm, seed=config.seed, bf16=False,
                  report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
                  disable_tqdm=True, train_sampling_strategy="sequential", dataloader_num_workers=0,
                  activation_checkpointing=False)
    dataset = datasets.Dataset.from_list(ordered)
    if kind == "sft_trainer":
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, max_length=None, packing=False,
                                                         padding_free=True),
                             train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=dataset,
                          data_collator=DataCollatorWithFlattening(), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)   # with no progress bar it prints the final metrics
    return trainer


def prepare(kind: str, base: nn.Module, tokenizer: Any, examples: Examples, ordered: Examples,
            config: TrainConfig) -> Callable[[], dict[str, float]]:
    """Set up one side on a fresh copy of `base`; return the call that trains it and reports the
    loop's seconds and the whole call's seconds ("wall")."""
    model = copy.deepcopy(base)
    if kind == "ours":
        def run() -> dict[str, float]:
            began = time.perf_counter()
            result = train(model, examples, config, progress=False)
            return {"seconds": result.seconds, "wall": time.perf_counter() - began, "tokens": result.tokens}
        return run

    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds = time.perf_counter() - self.began

    timer, folder = LoopTimer(), tempfile.TemporaryDirectory()
    trainer = library_trainer(kind, model, tokenizer, ordered, config, folder.name, [timer])
    check_same_examples(trainer.data_collator, ordered, config.batch_size, tokenizer.pad_token_id)

    def run_library() -> dict[str, float]:
        began = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - began
        folder.cleanup()
        return {"seconds": timer.seconds, "wall": wall, "tokens": sum(len(ex["input_ids"]) for ex in ordered)}
    return run_library


def check_same_examples(collate: Callable, ordered: Examples, batch_size: int, pad_id: int) -> None:
    """Fail unless a library's collator puts the same examples, with the same labels, into every
    batch as our loop does (each side lays them out in rows its own way)."""
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        ours = examples_in(padding_free_batch(chunk, pad_id), pad_id)
        theirs = examples_in(collate(chunk), pad_id)
        assert ours == theirs, f"{type(collate).__name__} batches other examples than ours"


def examples_in(batch: dict[str, torch.Tensor], pad_id: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (input_ids, labels after the first) of each example in a padded or packed batch, sorted.
    Only labels after an example's first token count: the first is predicted from nothing."""
    ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    return sorted((tuple(ids[row][start:end]), tuple(labels[row][start + 1:end]))
                  for row, start, end in example_spans(batch, pad_id))


def matmul_flops(size: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of one fp32 size x size matmul here, at torch's thread count: the peak MFU divides by."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b                                                            # warm-up: kernels and caches
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - began)
    return 2 * size ** 3 / median(seconds)


def mfu(model: nn.Module, batch_size: int, tokens_per_second: float, matmul_size: int,
        details: dict[str, Any]) -> Comparison:
    """Our loop's model FLOPs (6 N per token) per second over this machine's fp32 matmul peak, both
    at torch's present thread count."""
    flops_per_token, peak = 6 * sum(p.numel() for p in model.parameters()), matmul_flops(matmul_size)
    threads = torch.get_num_threads()
    return Comparison(f"train MFU, batch {batch_size}, {threads} thread{'s' * (threads > 1)}: 6N tokens/s "
                      "over the fp32 matmul peak", "FLOP/s", flops_per_token * tokens_per_second, peak,
                      MFU_GOAL, higher_is_better=True,
                      details={**details, "threads": threads, "flops_per_token": flops_per_token,
                               "matmul_flops": peak})


def setup(quick: bool = False) -> tuple[nn.Module, Any, Examples, TrainConfig]:
    """The base model, its tokenizer, the tokenized examples and the config every side trains with."""
    base, tokenizer = load_base(profile="tiny")
    task = load_task("instructions", profile="tiny")["train"]
    examples = tokenize_instructions(tokenizer, task.select(range(16)) if quick else task)
    steps, batch_size = (2, 4) if quick else (20, 16)
    return base, tokenizer, examples, TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-3, seed=0)


def ours_tokens_per_second(repeats: int = 5) -> float:
    """Our loop's tokens/s, the median of `repeats` runs after a warm-up one: the "ours" side of
    `run` alone, at torch's present thread count (what benchmarks/notebook_times.py scales by)."""
    base, tokenizer, examples, config = setup()
    runs = [prepare("ours", base, tokenizer, examples, [], config)() for _ in range(repeats + 1)]
    return median([run["tokens"] / run["seconds"] for run in runs[1:]])


def run(quick: bool = False, repeats: int | None = None) -> list[Comparison]:
    """Tokens/s (and, unless `quick`, peak memory) of our loop, Trainer and SFTTrainer."""
    base, tokenizer, examples, config = setup(quick)
    steps, batch_size, repeats = config.max_steps, config.batch_size, repeats or (1 if quick else 5)
    ordered = [examples[i] for i in example_order(len(examples), steps * batch_size, config.seed)]

    def side(kind: str, steps: int) -> Callable[[], dict[str, float]]:
        short = replace(config, max_steps=steps)
        return prepare(kind, base, tokenizer, examples, ordered[:steps * batch_size], short)

    sides = ["ours", *LIBRARIES]
    if not quick:   # a 2-step run of each side first: lazy initialisation stays out of the timings
        for kind in sides:
            side(kind, 2)()
    runs = interleaved({kind: lambda kind=kind: side(kind, steps)() for kind in sides}, repeats, warmup=0)
    assert len({run["tokens"] for side_runs in runs.values() for run in side_runs}) == 1, "unequal work"
    per_round = {kind: [run["tokens"] / run["seconds"] for run in runs[kind]] for kind in sides}
    details = {"steps": steps, "batch_size": batch_size, "repeats": repeats, "runs": runs,
               "tokens_per_run": runs["ours"][0]["tokens"]}
    rows = [Comparison(f"train tokens/s vs {name}", "tokens/s", median(per_round["ours"]),
                       median(per_round[kind]), GOAL, higher_is_better=True, details=details,
                       spread=spread(per_round["ours"], per_round[kind])) for kind, name in LIBRARIES.items()]
    rows.append(mfu(base, batch_size, median(per_round["ours"]), 256 if quick else 1024, details))
    threads = torch.get_num_threads()
    if not quick and (cores := os.cpu_count() or 1) != threads:   # and at one thread per core
        set_threads(cores)
        own = interleaved({"ours": lambda: side("ours", steps)()}, repeats)["ours"]
        rows.append(mfu(base, batch_size, median([run["tokens"] / run["seconds"] for run in own]), 1024,
                        {**details, "runs": {"ours": own}}))
        set_threads(threads)
    if quick:   # torch's memory-timeline analysis takes ~6 s per side: full runs only
        return rows
    peak = {kind: measure_peak(side(kind, 3))["total"] for kind in sides}
    return rows + [Comparison(f"train peak memory vs {name}", "bytes", peak["ours"], peak[kind], None,
                              higher_is_better=False, details={"steps": 3})
                   for kind, name in LIBRARIES.items()]


def main(argv: list[str] | None = None) -> list[Comparison]:
    return command_line(run, __doc__.split("\n")[0], "2 steps of batch 4, once, no peak memory", argv)


if __name__ == "__main__":
    main()
