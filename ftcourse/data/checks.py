"""Checks at the data boundary: a dataset that lacks a field fails here, naming field and row;
a prompt in two splits fails here too, and repeated prompts are dropped with a count."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

MAX_REPORTED = 5  # problems listed in one error; the total count is always given


def require_fields(rows: Sequence[Mapping[str, Any]], fields: Sequence[str],
                   name: str = "dataset") -> None:
    """Raise ValueError unless every row has every field as a non-empty string.

    Args:
        rows: a `datasets.Dataset` or a list of dicts.
        fields: the names each row must have, e.g. ("instruction", "response").
        name: what to call the data in the message.
    """
    if len(rows) == 0:
        raise ValueError(f"The {name} is empty: it needs at least one row with fields {list(fields)}.")
    columns = getattr(rows, "column_names", None)
    if columns is not None and (absent := [f for f in fields if f not in columns]):
        raise ValueError(f"The {name} has no field {absent[0]!r} (every row lacks it, starting with "
                         f"row 0). Its fields are {columns}; it needs {list(fields)}. Rename a column "
                         f"with dataset.rename_column(old, {absent[0]!r}) or add it with dataset.map.")
    problems = []
    for index, row in enumerate(rows):
        for field in fields:
            if field not in row:
                problems.append(f"row {index} has no field {field!r} (its fields: {sorted(row)})")
            elif not isinstance(row[field], str):
                problems.append(f"row {index}: field {field!r} must be a string, "
                                f"got {type(row[field]).__name__} {row[field]!r}")
            elif not row[field].strip():
                problems.append(f"row {index}: field {field!r} is empty")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise ValueError(f"The {name} has {len(problems)} problem(s): {shown}{more}. "
                         f"Each row needs non-empty string fields {list(fields)}.")


def require_disjoint(splits: Mapping[str, Sequence[Mapping[str, Any]]], key: str) -> None:
    """Raise ValueError if any value of `key` (the prompt) appears in more than one split.

    A test question that is also a training question measures memory, not generalisation.
    """
    seen: dict[Any, str] = {}
    shared: dict[Any, tuple[str, str]] = {}
    for split, rows in splits.items():
        for value in {row[key] for row in rows}:
            if value in seen and value not in shared:
                shared[value] = (seen[value], split)
            seen.setdefault(value, split)
    if shared:
        value, (first, second) = next(iter(shared.items()))
        raise ValueError(f"{len(shared)} {key}(s) appear in more than one split, e.g. {str(value)[:60]!r} "
                         f"in {first} and {second}; test scores would reward memorising. Split by "
                         f"unique {key} (ftcourse.data.split_rows) or drop the repeats from the later split.")


def drop_duplicates(rows: Sequence[Mapping[str, Any]], key: str, name: str = "dataset") -> list[int]:
    """Indices of the rows whose `key` is the first of its value; warns with the count of the rest."""
    first: dict[Any, int] = {}
    for index, row in enumerate(rows):
        first.setdefault(row[key], index)
    if len(first) < len(rows):
        warnings.warn(f"The {name} repeats the {key} of an earlier row {len(rows) - len(first)} time(s) "
                      f"out of {len(rows)} rows; keeping the first of each, so no {key} can land in two "
                      "splits.", stacklevel=2)
    return sorted(first.values())
