"""Experiments: several fine-tuning runs on the same data, compared in one tidy table.

The method chapters (04-07) ask one question many ways: given the same training rows, test rows
and probe batch, what does each method cost and what does it reach? `fine_tune_all` trains a
fresh copy of the base model for each named `Run` (a method and its TrainConfig) and scores it;
`method_table` lays the runs side by side: trainable parameters, time per step, memory (modelled,
and measured if asked), what is saved to disk, the score with its interval, and what the run cost
elsewhere (forgetting).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ftcourse.batching import pad_batch
from ftcourse.chat import tokenize_example
from ftcourse.data import count_rows
from ftcourse.evaluate import TaskScore, forgetting, score_task
from ftcourse.memory import Setup, estimate, measure_training_step, precision_of, stored_bytes
from ftcourse.methods import count_trainable, get_method, saved_megabytes
from ftcourse.params import REAL_MODELS, flops_per_token
from ftcourse.profiles import Profile, get_profile
from ftcourse.sft import finetune
from ftcourse.train import TrainConfig, TrainResult

METRIC_NAMES = {"exact_match": "exact match", "rouge_l": "ROUGE-L", "mentions_answer": "mentions answer"}


@dataclass(frozen=True)
class Run:
    """One run of an experiment: how to fine-tune (a method or "full") and for how long, how fast."""

    method: Any
    config: TrainConfig


@dataclass
class Trained:
    """A finished run: the model, its training record, its test score and what it cost elsewhere."""

    method: Any
    model: nn.Module
    result: TrainResult
    score: TaskScore
    forgetting: dict[str, float] = field(default_factory=dict)

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.result.seconds / len(self.result.history)


def probe_batch(tokenizer: Any, rows: Sequence[dict[str, str]], size: int = 16) -> dict[str, Tensor]:
    """The first `size` instruction rows as one padded batch: the batch memory is measured on."""
    examples = [tokenize_example(tokenizer, row["instruction"], row["response"]) for row in rows[:size]]
    return pad_batch(examples, tokenizer.pad_token_id)


def fine_tune_all(base: nn.Module, tokenizer: Any, train_rows: Any, test_rows: Sequence[dict[str, str]],
                  runs: Mapping[str, Run], *, held_out: Sequence[dict] | None = None,
                  probes: Sequence[tuple[str, str]] | None = None, reuse: str | Path | None = None,
                  progress: bool = False) -> dict[str, Trained]:
    """Fine-tune a fresh copy of `base` for each run, score it on `test_rows`, and, given a held-out
    text and fact probes, measure what it forgot (`ftcourse.evaluate.forgetting`). With `reuse`, a
    run stored there by an earlier chapter is loaded instead (`finetune`)."""
    trained = {}
    for name, run in runs.items():
        model, result = finetune(copy.deepcopy(base), tokenizer, train_rows, run.method, run.config,
                                 reuse=reuse, progress=progress)
        lost = forgetting(model, tokenizer, held_out, probes) if held_out is not None else {}
        trained[name] = Trained(run.method, model, result, score_task(model, tokenizer, test_rows), lost)
    return trained


SUSTAINED_TFLOPS = 100.0   # assumed for time estimates: about a third of an A100's bf16 peak


def preview_runs(runs: Mapping[str, tuple[str, Run]], profile: str | Profile = "gpu",
                 rows_per_example: Mapping[str, int] | None = None) -> Any:
    """What a chapter's runs would cost on `profile` (a GPU one), computed without a download:
    training rows, optimizer steps, the memory model's peak with every sequence as long as the
    profile allows (NaN for methods it counts on a model only: IA3, adapters), and an upper bound
    on compute and on time at SUSTAINED_TFLOPS.

    Args:
        runs: {name: (task, Run)}.
        rows_per_example: {name: 2} for preference pairs (a chosen and a rejected row each).
    """
    import pandas as pd

    profile = get_profile(profile)
    if profile.shape is None:
        raise ValueError(f"Profile {profile.name!r} names no model shape (ftcourse.params.REAL_MODELS) "
                         "to compute with; preview a GPU profile such as 'gpu'.")
    config = REAL_MODELS[profile.shape]
    per_token = flops_per_token(config, profile.max_seq_len)["train_step"]
    table = {}
    for name, (task, run) in runs.items():
        train_rows = count_rows(task, profile)
        steps = run.config.total_steps(train_rows)
        batch = run.config.batch_size * (rows_per_example or {}).get(name, 1)
        tokens = steps * run.config.grad_accum_steps * batch * profile.max_seq_len
        setup = Setup(method=run.method, precision=precision_of(profile.dtype), batch_size=batch,
                      seq_len=profile.max_seq_len)
        try:
            peak = estimate(config, setup).peak / 1e9
        except ValueError:       # IA3 and adapters are counted on a model with them applied only
            peak = float("nan")
        table[name] = {"task": task, "train rows": train_rows, "steps": steps,
                       "peak GB (memory model)": peak,
                       "PFLOP (at most)": per_token * tokens / 1e15,
                       "minutes (at most)": per_token * tokens / (SUSTAINED_TFLOPS * 1e12) / 60}
    return pd.DataFrame.from_dict(table, orient="index").rename_axis(
        f"on {profile.name}: {profile.shape}, {profile.dtype}, rows of up to {profile.max_seq_len} tokens")


def method_table(trained: Mapping[str, Trained], base: nn.Module, *, probe: dict[str, Tensor] | None = None,
                 measure_memory: bool = False, before: Mapping[str, float] | None = None) -> Any:
    """One row per run (a pandas DataFrame): what it trains, costs and reaches.

    Columns: trainable parameters (and % of the base's), ms per step, the score (its mean and 95%
    interval) and, when a run is named "full", the score as % of it; MB saved per task, of the
    frozen base and of the trainable weights; with a `probe` batch the modelled peak memory of a
    step on it (and the measured one with `measure_memory`); with the base's `before` forgetting
    measures, the held-out loss change and the fact recall after training.
    """
    import pandas as pd

    total = count_trainable(base)["total"]
    reference = trained["full"].score.ci.estimate if "full" in trained else None
    rows = {}
    for name, run in trained.items():
        metric = METRIC_NAMES.get(run.score.metric, run.score.metric)
        row = {"trainable": count_trainable(run.model)["trainable"]}
        row["trainable %"] = 100 * row["trainable"] / total
        row |= {"ms per step": run.ms_per_step, metric: run.score.ci.estimate, "95% CI": str(run.score.ci)}
        if reference is not None:              # undefined where full fine-tuning scores 0
            row["% of full FT"] = 100 * run.score.ci.estimate / reference if reference else float("nan")
        row |= {"saved MB": saved_megabytes(run.model, run.method),
                "frozen MB": stored_bytes(run.model, trainable=False) / 1e6,
                "trainable MB": stored_bytes(run.model, trainable=True) / 1e6}
        if probe is not None:
            setup = Setup(method=get_method(run.method), batch_size=len(probe["input_ids"]),
                          seq_len=probe["input_ids"].shape[1], padding=True)
            row["peak MB modelled"] = estimate(run.model, setup).peak / 1e6
            if measure_memory:
                row["peak MB measured"] = measure_training_step(run.model, probe)["total"] / 1e6
        if before is not None and run.forgetting:
            row["held-out loss change"] = run.forgetting["held-out loss"] - before["held-out loss"]
            row["fact recall"] = run.forgetting["fact recall"]
        rows[name] = row
    return pd.DataFrame(rows).T


def memory_table(base: nn.Module, methods: Mapping[str, Any], probe: dict[str, Tensor],
                 checkpointing: Sequence[str] = ()) -> Any:
    """The memory model against the profiler (a pandas DataFrame): for each method applied to a fresh
    copy of `base` (and with gradient checkpointing for those named in `checkpointing`), the
    predicted and the measured peak of one training step on `probe`, in MB, and their ratio."""
    import pandas as pd

    rows = {}
    for name, method in methods.items():
        for checkpointed in (False, True) if name in checkpointing else (False,):
            setup = Setup(method=get_method(method), batch_size=len(probe["input_ids"]),
                          seq_len=probe["input_ids"].shape[1], padding=True,
                          gradient_checkpointing=checkpointed)
            model = get_method(method).apply(copy.deepcopy(base))
            if checkpointed:
                getattr(model, "base_model", model).activation_checkpointing_enable()
            rows[name + (" + checkpointing" if checkpointed else "")] = {
                "predicted MB": estimate(base.config, setup).peak / 1e6,
                "measured MB": measure_training_step(model, probe)["total"] / 1e6}
    table = pd.DataFrame(rows).T
    table["predicted / measured"] = table["predicted MB"] / table["measured MB"]
    return table

