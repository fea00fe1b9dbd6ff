"""Data for every chapter: the synthetic world on the tiny profile, public datasets on the GPU ones.

`load_task(name)` returns a `datasets.DatasetDict` with train / validation / test splits and the
same fields whichever profile supplies it, so a chapter's code never asks where data came from.

| task | fields | what it teaches |
|---|---|---|
| instructions | instruction, response, task | SFT: qa + arithmetic + reverse + describe (+ alpaca, hub) |
| qa, arithmetic, reverse, describe | instruction, response, task | one instruction task alone |
| routing | text, label, instruction, response | classification into four teams |
| preferences | prompt, chosen, rejected, kind | reward models, DPO |
| newfacts | instruction, response, task | knowledge injection: facts absent from pretraining |
"""

from __future__ import annotations

from functools import cache

from ftcourse.data.checks import require_disjoint, require_fields
from ftcourse.data.files import (
    evaluation_row,
    load_data_file,
    prompt_of,
    read_rows,
    read_training_rows,
    split_rows,
)
from ftcourse.data.hub import HUB_TASKS, load_hub_task, split_sizes
from ftcourse.data.tasks import (
    PROMPT_FIELD,
    SPLITS,
    TASK_FIELDS,
    arithmetic_questions,
    as_multiple_choice,
    describe_requests,
    fact_questions,
    newcomer_facts,
    preference_pairs,
    reversal_requests,
    routing_requests,
)
from ftcourse.data.world import World, make_world
from ftcourse.profiles import Profile, get_profile

# The world the embedded base model was pretrained on (its model card records the same numbers).
WORLD_SEED = 0
NUM_PEOPLE = 128
NUM_NEWCOMERS = 24
# The tasks of the instruction data, each labelled in its `task` field, on every profile.
INSTRUCTION_TASKS = ("qa", "arithmetic", "reverse", "describe")


@cache
def default_world() -> World:
    """The world of the embedded base model."""
    return make_world(NUM_PEOPLE, NUM_NEWCOMERS, WORLD_SEED)


def synthetic_rows(name: str, world: World | None = None) -> dict[str, list[dict]]:
    """The rows of a synthetic task per split, as plain dicts."""
    world = world or default_world()
    seed = world.seed
    makers = {
        "qa": lambda: fact_questions(world, seed),
        "arithmetic": lambda: arithmetic_questions(seed),
        "reverse": lambda: reversal_requests(seed),
        "describe": lambda: describe_requests(world, seed),
        "routing": lambda: routing_requests(seed),
        "preferences": lambda: preference_pairs(world, seed),
        "newfacts": lambda: newcomer_facts(world),
    }
    if name == "instructions":
        parts = [synthetic_rows(task, world) for task in INSTRUCTION_TASKS]
        return {split: [row for part in parts for row in part[split]] for split in SPLITS}
    _check_task(name)
    return makers[name]()


def load_task(name: str, profile: str | Profile | None = None, world: World | None = None):
    """A `datasets.DatasetDict` (train / validation / test) for task `name` on `profile`."""
    import datasets

    _check_task(name)
    profile = get_profile(profile)
    if profile.data == "hub" and name == "instructions":   # each task by the same name, and Alpaca
        parts = [load_task(task, profile, world) for task in INSTRUCTION_TASKS]
        parts.append(load_hub_task(name, profile.data_dir))
        return datasets.DatasetDict({split: datasets.concatenate_datasets([part[split] for part in parts])
                                     for split in SPLITS})
    if profile.data == "hub" and name in HUB_TASKS:   # the others stay synthetic on every profile
        return load_hub_task(name, profile.data_dir)
    rows = synthetic_rows(name, world)
    splits = datasets.DatasetDict({split: datasets.Dataset.from_list(rows[split]) for split in SPLITS})
    for split, dataset in splits.items():
        require_fields(dataset, TASK_FIELDS[name], name=f"{name} {split} split")
    require_disjoint(rows, PROMPT_FIELD[name])
    return splits


def count_rows(name: str, profile: str | Profile | None = None, split: str = "train") -> int:
    """Rows of a task's split on `profile`, counted without loading or downloading a hub dataset
    (its published size, before duplicates are dropped): what a GPU run will train on."""
    _check_task(name)
    profile = get_profile(profile)
    if profile.data == "hub" and name == "instructions":
        return sum(count_rows(task, profile, split) for task in INSTRUCTION_TASKS) + \
            split_sizes(HUB_TASKS[name].rows)[split]
    if profile.data == "hub" and name in HUB_TASKS:
        return split_sizes(HUB_TASKS[name].rows)[split]
    return len(synthetic_rows(name)[split])


def _check_task(name: str) -> None:
    if name not in TASK_FIELDS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(TASK_FIELDS)}.")


__all__ = ["PROMPT_FIELD", "TASK_FIELDS", "World", "as_multiple_choice", "count_rows", "default_world",
           "evaluation_row",
           "load_data_file", "load_task", "make_world", "prompt_of", "read_rows", "read_training_rows",
           "require_disjoint", "require_fields", "split_rows", "synthetic_rows"]
