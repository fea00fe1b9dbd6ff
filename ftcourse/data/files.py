"""Your own data from a file: JSON Lines (one object per line) or a JSON list of objects.

Every problem is reported with the file and line that has it, so a bad row is found in seconds:
text that is not UTF-8, a line that is not JSON or not an object, an empty file. Fields a task does
not use are dropped with a warning that counts them (Alpaca's "input" silently lost is a classic).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftcourse.data.checks import require_fields
from ftcourse.data.tasks import SPLITS, split_keys


def read_rows(path: str | Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a .jsonl or .json file, checked to have non-empty string `fields`.

    Other fields are dropped with a warning naming them and counting the rows that had them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file {path}: pass the path of a .jsonl or .json file.")
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: read_rows reads .jsonl (one JSON object per line) or .json (a list "
                         f"of objects), not {path.suffix or 'a file without a suffix'!r}.")
    text = _decode(path)
    rows = _parse_lines(path, text) if path.suffix == ".jsonl" else _parse_list(path, text)
    if not rows:
        raise ValueError(f"{path} has no rows: it needs at least one object with fields {list(fields)}.")
    require_fields(rows, fields, name=f"data file {path}")
    extra = Counter(name for row in rows for name in row if name not in fields)
    if extra:
        counts = ", ".join(f"{name!r} (in {count} of {len(rows)} rows)" for name, count in extra.items())
        warnings.warn(f"{path}: dropped {len(extra)} field(s) that are not used: {counts}. The fields "
                      f"used are {list(fields)}; merge any that matter into them first (e.g. Alpaca's "
                      "'input' into 'instruction').", stacklevel=2)
    return [{name: row[name] for name in fields} for row in rows]


def split_rows(rows: Sequence[dict[str, Any]], key: str, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test (60/10/30 of the unique `key` values, shuffled with `seed`).

    Rows that share a `key` (the same prompt) always land in the same split.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    keys = split_keys(list(groups), seed)
    return {split: [row for value in keys[split] for row in groups[value]] for split in SPLITS}


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text: line {line} has the byte {data[err.start]:#04x} "
                         f"(at byte offset {err.start}). Re-encode the file as UTF-8, e.g. "
                         f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`.") from None


def _parse_lines(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number} is not valid JSON ({err.msg} at column "
                             f"{err.colno}): {line[:80]!r}. Each line must be one JSON object.") from None
        rows.append(_as_object(row, f"{path}, line {number}"))
    return rows


def _parse_list(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column "
                         f"{err.colno}). A .json data file holds one list of objects.") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a list of objects; for one "
                         "object per line, name the file .jsonl.")
    return [_as_object(row, f"{path}, item {index}") for index, row in enumerate(data)]


def _as_object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object: each row must look "
                         'like {"instruction": "...", "response": "..."}.')
    return row
