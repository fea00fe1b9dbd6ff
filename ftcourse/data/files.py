"""Your own data from a file: JSON Lines, a JSON list of objects, CSV or Parquet.

Rows come in two shapes: instruction/response pairs, or chats in the `messages` format that
OpenAI's and Hugging Face's chat datasets use (a list of role/content turns), trained on their
assistant turns. Every problem is reported with the file and the line or row that has it, so a
bad row is found in seconds: text that is not UTF-8, a line that is not JSON or not an object, an
empty file, a chat with no assistant turn. A byte-order mark (as Windows editors write) is
dropped with a warning. Fields a task does not use are dropped with a warning that counts them
(Alpaca's "input" silently lost is a classic).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftcourse.chat import check_chat
from ftcourse.data.checks import require_fields
from ftcourse.data.tasks import SPLITS, split_keys

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
INSTRUCTION_FIELDS = ("instruction", "response")
CHAT_FIELD = "messages"


def read_rows(path: str | Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a .jsonl, .json, .csv or .parquet file, checked to have non-empty string `fields`.

    Other fields are dropped with a warning naming them and counting the rows that had them.
    """
    path = Path(path)
    return _checked(path, _load(path, fields), fields)


def read_training_rows(path: str | Path) -> list[dict[str, Any]]:
    """Training rows from a file in either shape, told apart by the first row: instruction/response
    pairs, or chats (a `messages` list of role/content turns, each chat ending with the assistant
    turn to learn). Each chat is checked turn by turn, naming the row of any problem."""
    path = Path(path)
    rows = _load(path, INSTRUCTION_FIELDS)
    if CHAT_FIELD not in rows[0]:
        return _checked(path, rows, INSTRUCTION_FIELDS)
    chats = [{CHAT_FIELD: _as_chat(row, f"{path}, row {index}")} for index, row in enumerate(rows)]
    return _keep_fields(path, [row | chat for row, chat in zip(rows, chats)], (CHAT_FIELD,))


def prompt_of(row: dict[str, Any]) -> str:
    """What a row asks: its instruction, or its chat up to the last assistant turn (as JSON)."""
    return json.dumps(evaluation_row(row)[CHAT_FIELD]) if CHAT_FIELD in row else row["instruction"]


def evaluation_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row as `score_task` takes it: instruction/response as it is; a chat as the turns before
    its last assistant turn (`messages`, the prompt) and that turn's text (`response`)."""
    if CHAT_FIELD not in row:
        return row
    turns = row[CHAT_FIELD]
    last = max(i for i, turn in enumerate(turns) if turn["role"] == "assistant")
    return {CHAT_FIELD: turns[:last], "response": turns[last]["content"]}


def load_data_file(path: str | Path, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Your own data, split before any training: train / validation / test rows from a file
    (`read_training_rows`), 60/10/30 of its unique prompts with `seed`, no prompt in two splits.
    The test rows are in `evaluation_row`'s form, ready for `score_task`."""
    splits = split_rows(read_training_rows(path), prompt_of, seed)
    if not splits["train"] or not splits["test"]:
        rows = sum(map(len, splits.values()))
        raise ValueError(f"{path} has too few distinct prompts ({rows} rows) to hold some out for "
                         "testing; it needs at least 4, and hundreds to measure anything.")
    return splits | {"test": [evaluation_row(row) for row in splits["test"]]}


def split_rows(rows: Sequence[dict[str, Any]], key: str | Callable[[dict[str, Any]], Any],
               seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Train / validation / test (60/10/30 of the unique prompts, shuffled with `seed`).

    The prompt is the field `key`, or what `key(row)` returns (e.g. `prompt_of`). Rows that share a
    prompt always land in the same split.
    """
    prompt = key if callable(key) else (lambda row: row[key])
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(prompt(row), []).append(row)
    keys = split_keys(list(groups), seed)
    return {split: [row for value in keys[split] for row in groups[value]] for split in SPLITS}


def _load(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"No data file {path}: pass the path of a {', '.join(SUFFIXES)} file.")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: data files are .jsonl (one JSON object per line), .json (a list of "
                         f"objects), .csv (a header row, then one row per example) or .parquet, not "
                         f"{path.suffix or 'a file without a suffix'!r}.")
    if path.suffix == ".parquet":
        rows = _parse_parquet(path)
    else:
        text = _decode(path)
        parse = {".jsonl": _parse_lines, ".json": _parse_list, ".csv": _parse_csv}[path.suffix]
        rows = parse(path, text)
    if not rows:
        raise ValueError(f"{path} has no rows: it needs at least one object with fields {list(fields)} "
                         f"(or a {CHAT_FIELD!r} list of chat turns).")
    return rows


def _checked(path: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """`rows` with non-empty string `fields` (`require_fields`), and only those."""
    require_fields(rows, fields, name=f"data file {path}")
    return _keep_fields(path, rows, fields)


def _keep_fields(path: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    extra = Counter(name for row in rows for name in row if name not in fields)
    if extra:
        counts = ", ".join(f"{name!r} (in {count} of {len(rows)} rows)" for name, count in extra.items())
        warnings.warn(f"{path}: dropped {len(extra)} field(s) that are not used: {counts}. The fields "
                      f"used are {list(fields)}; merge any that matter into them first (e.g. Alpaca's "
                      "'input' into 'instruction').", stacklevel=3)
    return [{name: row[name] for name in fields} for row in rows]


def _as_chat(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The `messages` of a row as a list of {role, content} dicts, checked (`chat.check_chat`)."""
    if CHAT_FIELD not in row:
        raise ValueError(f"{where} has no {CHAT_FIELD!r} field (its fields: {sorted(row)}), but the first "
                         "row has one: a file holds chats or instruction/response rows, not both.")
    turns = row[CHAT_FIELD]
    if isinstance(turns, str):                      # a CSV cell holds the list as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: {CHAT_FIELD!r} is text that is not JSON ({err.msg}); write the "
                             'turns as a JSON list, e.g. [{"role": "user", "content": "Hi"}, ...].') from None
    if hasattr(turns, "tolist"):                    # Parquet gives an array of structs
        turns = turns.tolist()
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        raise ValueError(f"{where}: {CHAT_FIELD!r} must be a list of {{\"role\": ..., \"content\": ...}} "
                         f"objects, got {type(turns).__name__}.")
    chat = [{"role": turn.get("role"), "content": turn.get("content")} for turn in turns]
    check_chat(chat, where=where)
    if chat[-1]["role"] != "assistant":
        raise ValueError(f"{where} ends with a {chat[-1]['role']} turn: end each chat with the assistant "
                         "turn to learn (a later turn would only be context for nothing).")
    return chat


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        warnings.warn(f"{path} starts with a UTF-8 byte-order mark (BOM), as Windows editors write; it "
                      "was dropped and the rest read as UTF-8.", stacklevel=4)
        data = data[len(codecs.BOM_UTF8):]
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


def _parse_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        if None in row or None in row.values():
            raise ValueError(f"{path}, line {reader.line_num} has {'more' if None in row else 'fewer'} "
                             f"cells than the header ({reader.fieldnames}); quote any cell that holds "
                             'a comma, e.g. "Paris, France".')
        rows.append(row)
    return rows


def _parse_parquet(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        return pd.read_parquet(path).to_dict("records")
    except (OSError, ValueError) as err:     # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{path} is not a readable Parquet file ({err}).") from None


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
