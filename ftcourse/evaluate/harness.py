"""EleutherAI's lm-evaluation-harness on a model in memory, with our data as local tasks.

`write_generation_task` and `write_choice_task` write a task as the harness reads it (a YAML file
beside its JSONL data: nothing to download), `run_harness` runs tasks and returns each item's
result, and `harness_command` is the command line that runs a real model on a real benchmark.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

# The harness's exact_match, configured to compare as `ftcourse.evaluate.normalize` does: case
# ignored, whitespace and the punctuation normalize strips removed at both ends. (normalize also
# collapses runs of whitespace inside an answer, which no harness option does.)
_ENDS = "[\\s.!?,;:'\"]+"
EXACT_MATCH = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
               "ignore_case": True, "regexes_to_ignore": [f"^{_ENDS}", f"{_ENDS}$"]}
# Lines of the harness's (and datasets') progress bars, dropped from what run_harness passes on.
_PROGRESS = re.compile(r"\d+%\||\[\d\d:\d\d<|^\s*$")
CHOICE_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                  {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def write_generation_task(folder: str | Path, name: str, rows: Sequence[dict[str, str]], *,
                          max_new_tokens: int = 48) -> Path:
    """A generate-until task: each row's `instruction` answered greedily, scored by exact match
    against its `response` (with `run_harness(chat=True)`, the instruction is a chat turn)."""
    _require_rows(rows, ("instruction", "response"), name)
    config = {"output_type": "generate_until", "doc_to_text": "instruction", "doc_to_target": "response",
              "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": max_new_tokens},
              "metric_list": [EXACT_MATCH]}
    return _write_task(Path(folder), name, rows, config)


def write_choice_task(folder: str | Path, name: str, rows: Sequence[dict[str, Any]]) -> Path:
    """A log-likelihood multiple-choice task: per row a `context`, its `choices` and the index of
    the right one in `answer`; scored by accuracy, raw (acc) and per character (acc_norm)."""
    _require_rows(rows, ("context", "choices", "answer"), name)
    config = {"output_type": "multiple_choice", "doc_to_text": "context", "doc_to_choice": "choices",
              "doc_to_target": "answer", "target_delimiter": " ", "metric_list": CHOICE_METRICS}
    return _write_task(Path(folder), name, rows, config)


def run_harness(model: nn.Module, tokenizer: Any, folder: str | Path, tasks: Sequence[str], *,
                chat: bool = False, batch_size: int = 32, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Run the harness's tasks in `folder` on a model in memory: per task, one record per item
    in data order (the harness's own sample log: the doc, its responses and its metrics)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder = Path(folder)
    if missing := [task for task in tasks if not (folder / f"{task}.yaml").is_file()]:
        raise ValueError(f"No task file {missing[0]}.yaml in {folder}; write it first with "
                         "write_generation_task or write_choice_task.")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)       # its progress notes, not its warnings
    with contextlib.redirect_stderr(io.StringIO()) as log:     # progress bars dropped, the rest passed on
        results = simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=list(tasks),
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            apply_chat_template=chat, log_samples=True, bootstrap_iters=0, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    for line in log.getvalue().replace("\r", "\n").splitlines():
        if not _PROGRESS.search(line):
            print(line, file=sys.stderr)
    return {task: sorted(results["samples"][task], key=lambda sample: sample["doc_id"]) for task in tasks}


def harness_command(model: str, tasks: Sequence[str], *, adapter: str | None = None, chat: bool = False,
                    batch_size: int | str = "auto", output: str = "results/lm_eval") -> str:
    """The `lm_eval` command line for a hub model (and optionally a peft adapter) on named tasks."""
    model_args = f"pretrained={model},dtype=bfloat16" + (f",peft={adapter}" if adapter else "")
    return (f"lm_eval --model hf --model_args {model_args} --tasks {','.join(tasks)} "
            f"--batch_size {batch_size} --output_path {output} --log_samples"
            + (" --apply_chat_template" if chat else ""))


def _write_task(folder: Path, name: str, rows: Sequence[dict[str, Any]], config: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
              "test_split": "test"}
    task = {"task": name} | source | config
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(task, indent=1) + "\n")     # JSON is YAML
    return path


def _require_rows(rows: Sequence[dict[str, Any]], fields: tuple[str, ...], name: str) -> None:
    if not rows:
        raise ValueError(f"Task {name!r} has no rows; give it at least one.")
    if missing := [field for field in fields if field not in rows[0]]:
        raise ValueError(f"Task {name!r}: the rows have no {missing[0]!r} field (they have "
                         f"{', '.join(rows[0])}); this kind of task needs {', '.join(fields)}.")
