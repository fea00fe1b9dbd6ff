"""How long each chapter takes on the tiny profile: measured, written for the instructors' guide.

    python benchmarks/notebook_times.py --measure      # `make timings`: run every notebook, save the times
                                                       # (one at a time, then the book as make book runs it)
    python benchmarks/notebook_times.py --save FILE    # save the times of a run already made
    python benchmarks/notebook_times.py --show FILE    # print a run's times beside the guide's

`--measure` and `--save` write benchmarks/results/notebook_times.json and the table book/_timings.md
that the instructors' guide includes, with the machine they were measured on (CPU model, cores,
AVX-512 or not) and its training speed, which scales times from the AVX-512 kind to the slower
one (`slower_machine_factor`). They also rewrite the machine minutes in each chapter's "In this
chapter" time line (`<!-- time: STEM --> about N min`), so the chapters stay true when the times
are re-measured.
Each chapter is timed alone, as a learner runs it; the whole book is also timed as `make book`
runs it (`make executed`: notebooks side by side, one torch thread each), and the book's goal is
held against that time when it was measured.
`make test` records the times of its own nbval run and shows them beside the guide's. It never
fails on them: a machine twice as fast or twice as slow as the one that measured the guide is not a
defect, so time is never a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "benchmarks" / "results" / "notebook_times.json"
TABLE = ROOT / "book" / "_timings.md"
# Our 2-core test machines come in two kinds: with AVX-512 (bfloat16, VNNI) and without, which runs
# the book more slowly. The goals (issue 28) and the chapters' time lines are for the slower kind.
# Times measured there stand as they are. Times measured on the AVX-512 kind are scaled by how much
# faster that machine trains: our loop's tokens/s at one thread (the "ours" side of
# benchmarks/train_throughput.py), measured in the same run, against the slower kind's. Machines of
# one kind differ from day to day (the AVX-512 kind: 9,546 tokens/s on 2026-12-01, 5,763 on 12-02),
# so a fixed ratio misleads; this one followed the book: 2.8 against the book's 2.4-2.7 on 12-01.
# A `make timings` on the slower kind records its own speed too: the number to put here.
SLOWER_TOKENS_PER_SECOND = 3391     # `make bench` on the slower kind, 2026-12-02 (benchmarks/README.md)
BOOK_GOAL_MINUTES = 10
NOTEBOOK_GOAL_MINUTES = 2


def slower_machine_factor(record: dict[str, Any]) -> float:
    """How many times as long as where `record` (a saved measurement: its machine and training speed)
    was measured a run takes on the slower kind of our machines: 1 there, else the training speeds' ratio."""
    if not record.get("machine", {}).get("avx512"):
        return 1.0
    if not record.get("train_tokens_per_second"):
        raise ValueError("These times were measured on an AVX-512 machine without its training speed "
                         "(train_tokens_per_second), so they cannot be scaled to the slower machine; "
                         "re-measure them with `make timings`.")
    return record["train_tokens_per_second"] / SLOWER_TOKENS_PER_SECOND


def goals(times: dict[str, float], book_seconds: float | None = None, factor: float = 1.0) -> dict[str, Any]:
    """The book's goals, on the slower machine, against measured seconds per notebook and the whole
    book's seconds as `make book` runs it (the chapters' sum where that was not measured), measured
    on a machine `factor` times as fast."""
    slower = {notebook: seconds * factor / 60 for notebook, seconds in times.items()}
    over = sorted((notebook for notebook, minutes in slower.items() if minutes > NOTEBOOK_GOAL_MINUTES),
                  key=slower.__getitem__, reverse=True)
    book = sum(slower.values()) if book_seconds is None else book_seconds * factor / 60
    return {"book_minutes_slower": book, "book_met": book < BOOK_GOAL_MINUTES,
            "notebooks_over": [Path(notebook).stem for notebook in over],
            "met": book < BOOK_GOAL_MINUTES and not over}


def goal_text(times: dict[str, float], book_seconds: float | None = None, factor: float = 1.0) -> str:
    """One line: the book's time here and on the slower machine, against the two goals."""
    result = goals(times, book_seconds, factor)
    over = ", ".join(f"`{name}`" for name in result["notebooks_over"]) or "none"
    met = "met" if result["book_met"] else "**not met**"
    here = (f"{sum(times.values()) / 60:.1f} min one chapter at a time" if book_seconds is None else
            f"{book_seconds / 60:.1f} min as `make book` runs it (side by side)")
    if factor == 1.0:
        return (f"whole book {here} on the slower machine (goal: under {BOOK_GOAL_MINUTES} min: {met}); "
                f"over {NOTEBOOK_GOAL_MINUTES} min: {over}")
    return (f"whole book {here} here, about {result['book_minutes_slower']:.1f} min on the slower machine "
            f"(x{factor:.2f}; goal: under {BOOK_GOAL_MINUTES} min: {met}); "
            f"over {NOTEBOOK_GOAL_MINUTES} min there: {over}")


# A chapter's time line: "**Time:** <!-- time: 05_lora --> about 3 min of machine time ..."
TIME_LINE = re.compile(r"(<!-- time: (?P<stem>[\w-]+) --> about )(?P<minutes>\d+)( min of machine time)")
# A row of the instructors' three-hour plan: "| 0:35 | {doc}`../notebooks/02_sft...` | 3 min | ..."
LAB_PLAN = ROOT / "book" / "instructors.md"
LAB_ROW = re.compile(r"(\| \{doc\}`\.\./notebooks/(?P<stem>[\w-]+)` \| )(?P<minutes>\d+)( min \|)")


@contextmanager
def fresh_results() -> Iterator[dict[str, str]]:
    """The environment of a run on the tiny profile with a new results folder, so that no run
    stored by an earlier measurement is loaded."""
    with tempfile.TemporaryDirectory() as results:
        yield {**os.environ, "FTCOURSE_PROFILE": "tiny", "FTCOURSE_RESULTS": results}


def measure() -> dict[str, float]:
    """Run every chapter notebook alone under nbval, one after another, and return seconds per notebook."""
    times_file = ROOT / "_build" / "notebook_times.json"
    times_file.unlink(missing_ok=True)          # pytest --notebook-times adds to the file it finds
    notebooks = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "notebooks").glob("*.ipynb"))
    notebooks += sorted(str(path.relative_to(ROOT)) for path in (ROOT / "book").glob("*.ipynb"))
    with fresh_results() as env:
        subprocess.run([sys.executable, "-m", "pytest", *notebooks, "-q", "--notebook-times",
                        str(times_file)], cwd=ROOT, env=env, check=True)
    return json.loads(times_file.read_text())


def measure_book() -> float:
    """Run the whole book as `make book` does (`make executed`: side by side, every claim checked)
    and return its wall-clock seconds."""
    with fresh_results() as env:
        began = time.perf_counter()
        subprocess.run(["make", "executed"], cwd=ROOT, env=env, check=True)
        return time.perf_counter() - began


def cpu() -> dict[str, object]:
    """The CPU model, its core count and its AVX-512 features (from /proc/cpuinfo, where there is one)."""
    info = {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "avx512": []}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        named = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        info["model"] = named[0] if named else info["model"]
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        info["avx512"] = sorted(flag for flag in flags if flag.startswith("avx512"))
    return info


def machine_line(machine: dict[str, object]) -> str:
    """One sentence naming the machine a table was measured on."""
    avx512 = machine.get("avx512") or []
    named = [flag for flag in ("avx512f", "avx512_vnni", "avx512_bf16") if flag in avx512]
    features = f"AVX-512 ({', '.join(named)})" if avx512 else "no AVX-512"
    cores = machine.get("cores", machine.get("cpus", "?"))         # older records name it "cpus"
    return f"{machine.get('model', 'unknown CPU')}, {cores} cores, {features}"


def markdown_table(times: dict[str, float], machine: dict[str, object] | None = None,
                   book_seconds: float | None = None, factor: float = 1.0) -> str:
    """The guide's table: one row per notebook, alone, in seconds; the whole book one chapter at a
    time and, where measured, as `make book` runs it."""
    rows = [f"Measured on {machine_line(machine)}; re-measure with `make timings`.", ""] if machine else []
    rows += ["| notebook | run time |", "|---|---|"]
    chapters_first = sorted(times, key=lambda notebook: (not notebook.startswith("notebooks/"), notebook))
    rows += [f"| `{Path(notebook).stem}` | {times[notebook]:.0f} s |" for notebook in chapters_first]
    rows.append(f"| **whole book, one chapter at a time** | **{sum(times.values()) / 60:.1f} min** |")
    if book_seconds is not None:
        rows.append(f"| **whole book, as `make book` runs it (side by side)** | "
                    f"**{book_seconds / 60:.1f} min** |")
    return "\n".join(rows + ["", goal_text(times, book_seconds, factor).capitalize() + "."]) + "\n"


def machine_minutes(seconds: float, factor: float) -> int:
    """A chapter's run time on the slower of our machines, in whole minutes rounded up, from seconds
    measured on a machine `factor` times as fast.

    The chapters' time lines state it, so that a lab planned from them does not run short.
    """
    return math.ceil(seconds * factor / 60)


def write_time_lines(times: dict[str, float], factor: float, root: Path = ROOT) -> list[Path]:
    """Rewrite the minutes in the time line of each chapter notebook in `times`; return those changed.

    Only the number changes: the file is edited as bytes of UTF-8 text, not re-serialised, so the
    rest of the notebook stays byte for byte as it was, line endings included.
    """
    chapters = {root / name: seconds for name, seconds in times.items() if name.startswith("notebooks/")}
    problems, old, new = [], {}, {}
    for path, seconds in chapters.items():
        old[path] = path.read_bytes().decode("utf-8")
        stems = [match["stem"] for match in TIME_LINE.finditer(old[path])]
        if stems != [path.stem]:
            name = path.relative_to(root).as_posix()
            problems.append(f"{name} has time lines for {stems}, not one for {path.stem!r}")
        new[path] = TIME_LINE.sub(rf"\g<1>{machine_minutes(seconds, factor)}\g<4>", old[path])
    if problems:
        raise ValueError("; ".join(problems) + ". Each chapter needs exactly one line '<!-- time: STEM --> "
                         "about N min of machine time' in its 'In this chapter' box (tests/test_book.py).")
    changed = [path for path in chapters if new[path] != old[path]]
    for path in changed:
        path.write_bytes(new[path].encode("utf-8"))
    return changed


def write_lab_plan(times: dict[str, float], factor: float, plan: Path = LAB_PLAN) -> bool:
    """Rewrite the machine minutes of each chapter row in the instructors' three-hour plan.

    Returns whether the file changed; a row for a notebook that `times` lacks is an error.
    """
    text = plan.read_text()
    seconds = {row["stem"]: times.get(f"notebooks/{row['stem']}.ipynb") for row in LAB_ROW.finditer(text)}
    if missing := [stem for stem, measured in seconds.items() if measured is None]:
        raise ValueError(f"{plan.name}'s lab plan names {missing}, which the measured run lacks.")
    new = LAB_ROW.sub(lambda row: f"{row[1]}{machine_minutes(seconds[row['stem']], factor)}{row[4]}", text)
    if new != text:
        plan.write_text(new)
    return new != text


def training_speed() -> float:
    """Our loop's tokens/s on this machine at one thread, as `make bench` measures its "ours" side:
    what scales times measured here to the slower machine (`slower_machine_factor`)."""
    import torch
    from train_throughput import ours_tokens_per_second

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ours_tokens_per_second()
    finally:
        torch.set_num_threads(threads)


def save(times: dict[str, float], book_seconds: float | None = None) -> str:
    """Write the chapters' time lines, the JSON record (the machine it ran on, its training speed
    and, if measured, the whole book's side-by-side seconds) and the guide's table; return the table."""
    machine = {**cpu(), "python": platform.python_version(), "platform": platform.platform()}
    record = {"machine": machine, "train_tokens_per_second": round(training_speed()), "seconds": times}
    if book_seconds is not None:
        record["book_side_by_side_seconds"] = round(book_seconds, 1)
    factor = slower_machine_factor(record)
    write_time_lines(times, factor)            # first: a chapter without its time line stops everything
    write_lab_plan(times, factor)
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    SAVED.write_text(json.dumps(record, indent=1) + "\n")
    table = markdown_table(times, machine, book_seconds, factor)
    TABLE.write_text("<!-- Written by benchmarks/notebook_times.py (--measure, --save); do not edit -->\n\n"
                     + table)
    return table


def side_by_side(fresh: dict[str, float], saved: dict[str, Any]) -> str:
    """A fresh run's times beside the guide's, with both machines named; information, not a check."""
    guide = saved["seconds"]
    lines = [f"guide: {machine_line(saved.get('machine', {}))}", f"now:   {machine_line(cpu())}"]
    for notebook in sorted(set(guide) | set(fresh)):
        now, then = fresh.get(notebook, float("nan")), guide.get(notebook, float("nan"))
        lines.append(f"{notebook:45s} guide {then:6.0f} s   now {now:6.0f} s")
    lines.append(f"{'sum of the notebooks':45s} guide {sum(guide.values()) / 60:6.1f} min now "
                 f"{sum(fresh.values()) / 60:6.1f} min")
    lines.append("(the guide times each notebook alone; make test runs them side by side, one torch thread "
                 "each, so each takes longer and the whole book less than their sum)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--measure", action="store_true", help="run the notebooks and save their times")
    action.add_argument("--save", metavar="FILE",
                        help="save the times of a run made with pytest --notebook-times FILE")
    action.add_argument("--show", metavar="FILE", help="print a run's times beside the guide's")
    args = parser.parse_args(argv)
    if args.show:
        print(side_by_side(json.loads(Path(args.show).read_text()), json.loads(SAVED.read_text())))
        return
    times = measure() if args.measure else json.loads(Path(args.save).read_text())
    book_seconds = measure_book() if args.measure else None
    print(save(times, book_seconds))


if __name__ == "__main__":
    main()
