"""Public datasets for the GPU profiles, mapped to the fields of the synthetic tasks.

Only the GPU profiles reach this module, and only there may a dataset be downloaded. Each hub
dataset plays the role of the synthetic task of the same name (SQuAD's questions are "qa",
GSM8K's "arithmetic"), so a chapter's per-task code runs unchanged; the instruction data add
Alpaca's open-ended requests as task "alpaca". Tasks that need the synthetic world or a skill no
public set isolates (newfacts, reverse, describe) stay synthetic on every profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftcourse.data.checks import drop_duplicates, require_fields
from ftcourse.data.tasks import PROMPT_FIELD, TASK_FIELDS

MAX_ROWS = 5_000  # rows taken from a hub dataset before splitting 60/10/30: minutes per chapter on a GPU
SPLIT_SEED = 0
AG_NEWS_LABELS = ("world", "sports", "business", "science")


@dataclass(frozen=True)
class HubTask:
    """A hub dataset, its columns (checked on loading), and the function that maps one of its
    rows to our fields."""

    repo: str
    config: str | None
    columns: tuple[str, ...]
    to_row: Callable[[dict], dict]
    rows: int                      # of its train split, as published (for counts without a download)


def _alpaca(row: dict) -> dict:
    instruction = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return {"instruction": instruction, "response": row["output"], "task": "alpaca"}   # scored by ROUGE-L


def _squad(row: dict) -> dict:
    return {"instruction": f"{row['context']}\n\nQuestion: {row['question']}",
            "response": row["answers"]["text"][0], "task": "qa"}


def _gsm8k(row: dict) -> dict:
    return {"instruction": row["question"], "response": row["answer"].split("####")[-1].strip(),
            "task": "arithmetic"}


def _ag_news(row: dict) -> dict:
    label = AG_NEWS_LABELS[row["label"]]
    instruction = ("Which section does this news story belong to? Answer world, sports, business "
                   f"or science.\nStory: {row['text']}")
    return {"text": row["text"], "label": label, "instruction": instruction, "response": label}


def _orca_pairs(row: dict) -> dict:
    return {"prompt": row["question"], "chosen": row["chosen"], "rejected": row["rejected"],
            "kind": "orca"}


HUB_TASKS: dict[str, HubTask] = {
    "instructions": HubTask("yahma/alpaca-cleaned", None, ("instruction", "input", "output"), _alpaca,
                            51_760),
    "qa": HubTask("rajpurkar/squad", None, ("id", "title", "context", "question", "answers"), _squad, 87_599),
    "arithmetic": HubTask("openai/gsm8k", "main", ("question", "answer"), _gsm8k, 7_473),
    "routing": HubTask("fancyzhx/ag_news", None, ("text", "label"), _ag_news, 120_000),
    "preferences": HubTask("Intel/orca_dpo_pairs", None, ("system", "question", "chosen", "rejected"),
                           _orca_pairs, 12_859),
}


def local_file(task: HubTask, data_dir: str | Path) -> Path:
    """Where a local copy of `task`'s dataset lives: `<data_dir>/<owner>--<name>[--<config>].jsonl`,
    its train split with the hub's own columns (`ftcourse download` writes it)."""
    return Path(data_dir) / ("--".join([*task.repo.split("/"), *([task.config] if task.config else [])])
                             + ".jsonl")


def split_sizes(rows: int) -> dict[str, int]:
    """Rows per split of a hub dataset of `rows` rows, before duplicates are dropped: as many as
    `load_hub_task` takes (MAX_ROWS at most), cut 60/10/30 as `train_test_split` cuts them."""
    taken = min(MAX_ROWS, rows)
    test = math.ceil(0.3 * taken)
    validation = math.ceil((taken - test) / 7)
    return {"train": taken - test - validation, "validation": validation, "test": test}


def load_hub_task(name: str, data_dir: str | Path | None = None):
    """The hub dataset for `name` as train / validation / test with our fields, read from the hub
    (or its cache), or from a local copy in `data_dir`: the same rows, mapped by the same code."""
    import datasets

    task = HUB_TASKS[name]
    if data_dir is not None:
        path = local_file(task, data_dir)
        if not path.is_file():
            raise FileNotFoundError(f"No local copy of {task.repo!r} (task {name!r}): {path} is missing. "
                                    "Write it where there is network with `ftcourse download --profile "
                                    "gpu --to DIR`, or unset FTCOURSE_DATA_DIR to use the hub.")
        raw = datasets.load_dataset("json", data_files=str(path), split="train")
    else:
        try:
            raw = datasets.load_dataset(task.repo, task.config, split="train")
        except Exception as err:  # the hub raises many types; all mean "not available here"
            raise FileNotFoundError(
                f"Dataset {task.repo!r} (task {name!r}) could not be loaded: {type(err).__name__}: {err}. "
                "The GPU profiles download public datasets; run once with network access to fill the "
                "Hugging Face cache, set FTCOURSE_DATA_DIR to local copies (`ftcourse download`), or "
                "use FTCOURSE_PROFILE=tiny to work offline.") from err
    if absent := [column for column in task.columns if column not in raw.column_names]:
        raise ValueError(f"{task.repo} (task {name!r}) has no column(s) {absent}; its columns are "
                         f"{raw.column_names}. A local copy must keep the hub's columns: write it with "
                         "`ftcourse download`.")
    raw = raw.shuffle(seed=SPLIT_SEED).select(range(min(MAX_ROWS, len(raw))))
    mapped = raw.map(task.to_row, remove_columns=raw.column_names)
    require_fields(mapped, TASK_FIELDS[name], name=f"{task.repo} ({name})")
    mapped = mapped.select(drop_duplicates(mapped, PROMPT_FIELD[name], name=f"{task.repo} ({name})"))
    test = mapped.train_test_split(test_size=0.3, seed=SPLIT_SEED)
    val = test["train"].train_test_split(test_size=1 / 7, seed=SPLIT_SEED)
    return datasets.DatasetDict({"train": val["train"], "validation": val["test"], "test": test["test"]})


def download_tasks(data_dir: str | Path) -> list[Path]:
    """Save each hub dataset's train split, with its own columns, where `load_hub_task(name, data_dir)`
    reads it. Needs network (or the Hugging Face cache); run it once, where there is one."""
    import datasets

    written = []
    for task in HUB_TASKS.values():
        path = local_file(task, data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.load_dataset(task.repo, task.config, split="train").to_json(str(path), lines=True)
        written.append(path)
    return written
