"""Where the book's time goes: every notebook run cell by cell, with the training each cell does.

    python benchmarks/cell_profile.py                      # `make profile`: every chapter and book page
    python benchmarks/cell_profile.py notebooks/05_lora.ipynb --top 8

Each notebook runs in a fresh kernel of this Python (tiny profile, as `make test` runs it). Before
its first cell, one cell is run that counts the training this kernel does: every optimizer step
of `ftcourse.train.train` (its `_accumulate`, with the tokens it learned from) and of GRPO
(`ftcourse.rl.rollout`, with the tokens sampled), stamped with the time it ended. nbclient
records each cell's start and end, so every cell gets its seconds, the training steps that ended
within them and their tokens, and the section (the last `##` heading above it) it belongs to.
Writes benchmarks/results/cell_profile.json (every cell) and cell_profile.md (per notebook: the
total, the share of its time spent in training cells, and its slowest cells).
Time is information, never a test: nothing here fails on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "FTCOURSE-PROFILE "

# Run first in the kernel: count the steps and tokens each cell trains on. The counters wrap the
# module attributes that `train` and `train_grpo` look up on every step, so a notebook's own
# `from ftcourse.train import train` is counted too.
COUNTING_CELL = """\
import time as _time
import ftcourse.rl as _rl, ftcourse.train as _train
_ftcourse_steps = []
def _counted(function, kind, tokens_of):
    def wrapper(*args, **kwargs):
        out = function(*args, **kwargs)
        _ftcourse_steps.append((_time.time(), kind, int(tokens_of(out))))
        return out
    return wrapper
_train._accumulate = _counted(_train._accumulate, "train", lambda out: out[1])
_rl.rollout = _counted(_rl.rollout, "grpo", lambda out: out[0]["attention_mask"].sum())
"""
REPORT_CELL = f"import json as _json\nprint({MARKER!r} + _json.dumps(_ftcourse_steps))"


def profile_notebook(path: Path, results: Path, timeout: int = 900) -> list[dict[str, Any]]:
    """Run one notebook, its results in `results` (`$FTCOURSE_RESULTS`); return a row per code cell:
    index, section, seconds, steps, tokens, source."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    cells = notebook.cells
    notebook.cells = ([nbformat.v4.new_code_cell(COUNTING_CELL)] + cells
                      + [nbformat.v4.new_code_cell(REPORT_CELL)])
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, "FTCOURSE_PROFILE": "tiny", "FTCOURSE_RESULTS": str(results)})
    printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    steps = json.loads(next(line for line in printed.splitlines() if line.startswith(MARKER))[len(MARKER):])
    rows, section = [], path.stem
    for index, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            section = next((line.lstrip("# ") for line in cell.source.splitlines()
                            if line.startswith("## ")), section)
            continue
        timing = cell.metadata.get("execution", {})
        began, ended = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        seconds = (_instant(ended) - _instant(began)) if began and ended else 0.0
        mine = [(kind, tokens) for stamp, kind, tokens in steps
                if began and ended and _instant(began) <= stamp <= _instant(ended)]
        rows.append({"cell": index, "section": section, "seconds": round(seconds, 2),
                     "train_steps": sum(kind == "train" for kind, _ in mine),
                     "grpo_steps": sum(kind == "grpo" for kind, _ in mine),
                     "tokens": sum(tokens for _, tokens in mine),
                     "source": cell.source.splitlines()[0][:80] if cell.source else ""})
    return rows


def _instant(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def report(profiles: dict[str, list[dict[str, Any]]], top: int) -> str:
    """Markdown: the book's total, then per notebook its total, its training share, its slowest cells."""
    total = sum(row["seconds"] for rows in profiles.values() for row in rows)
    lines = [f"# Where the book's time goes ({total / 60:.1f} min of cells in all)", ""]
    lines += ["| notebook | seconds | in cells that train | steps | tokens |", "|---|---|---|---|---|"]
    for name, rows in profiles.items():
        seconds = sum(row["seconds"] for row in rows)
        training = sum(row["seconds"] for row in rows if row["train_steps"] or row["grpo_steps"])
        steps = sum(row["train_steps"] + row["grpo_steps"] for row in rows)
        lines.append(f"| `{name}` | {seconds:.0f} | {training / max(seconds, 1e-9):.0%} | {steps:,} | "
                     f"{sum(row['tokens'] for row in rows):,} |")
    for name, rows in profiles.items():
        seconds = sum(row["seconds"] for row in rows)
        lines += ["", f"## `{name}`: {seconds:.0f} s", "",
                  "| cell | section | seconds | share | steps | tokens | first line |",
                  "|---|---|---|---|---|---|---|"]
        for row in sorted(rows, key=lambda row: -row["seconds"])[:top]:
            steps = row["train_steps"] + row["grpo_steps"]
            lines.append(f"| {row['cell']} | {row['section']} | {row['seconds']:.1f} | "
                         f"{row['seconds'] / max(seconds, 1e-9):.0%} | {steps:,} | {row['tokens']:,} | "
                         f"`{row['source'].replace('|', '/')}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="default: every notebook of the book")
    parser.add_argument("--top", type=int, default=5, help="slowest cells listed per notebook")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    paths = [Path(path).resolve() for path in args.notebooks] or (
        sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.ipynb")))
    profiles = {}
    # A fresh results folder, shared by the notebooks in book order as a book build shares one: a
    # later chapter loads the runs an earlier one stored (ftcourse.run_store), none from before.
    with tempfile.TemporaryDirectory() as results:
        for path in paths:
            began = time.perf_counter()
            profiles[path.stem] = profile_notebook(path, Path(results))
            print(f"{path.stem}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cell_profile.json").write_text(json.dumps(profiles, indent=1) + "\n")
    (args.out / "cell_profile.md").write_text(report(profiles, args.top))
    print(report(profiles, args.top))


if __name__ == "__main__":
    main()
