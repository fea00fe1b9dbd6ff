"""How long each chapter takes on the tiny profile: measured, written for the instructors' guide.

    python benchmarks/notebook_times.py --measure          # run every notebook under nbval, save the times
    python benchmarks/notebook_times.py --compare FILE     # check a fresh run's times against the saved ones

`--measure` writes benchmarks/results/notebook_times.json and the table book/_timings.md that the
instructors' guide includes. `make test` records the times of its own nbval run and calls
`--compare` on them, so a guide whose timings drift by more than half fails CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "benchmarks" / "results" / "notebook_times.json"
TABLE = ROOT / "book" / "_timings.md"
TOLERANCE = 0.5          # a fresh run may differ from the saved time by this fraction...
SLACK_SECONDS = 10.0     # ...or by this many seconds, whichever is larger (short notebooks are noisy)
BOOK_GOAL_MINUTES = 15


def measure() -> dict[str, float]:
    """Run every chapter notebook under nbval (as `make test` does) and return seconds per notebook."""
    times_file = ROOT / "_build" / "notebook_times.json"
    notebooks = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "notebooks").glob("*.ipynb"))
    notebooks += sorted(str(path.relative_to(ROOT)) for path in (ROOT / "book").glob("*.ipynb"))
    env = {**os.environ, "FTCOURSE_PROFILE": "tiny"}
    subprocess.run([sys.executable, "-m", "pytest", *notebooks, "-q", "--notebook-times", str(times_file)],
                   cwd=ROOT, env=env, check=True)
    return json.loads(times_file.read_text())


def markdown_table(times: dict[str, float]) -> str:
    """The guide's table: one row per notebook, minutes and seconds, and the whole book."""
    rows = ["| notebook | run time on 2 CPU cores |", "|---|---|"]
    chapters_first = sorted(times, key=lambda notebook: (not notebook.startswith("notebooks/"), notebook))
    rows += [f"| `{Path(notebook).stem}` | {times[notebook]:.0f} s |" for notebook in chapters_first]
    total = sum(times.values())
    rows.append(f"| **whole book** | **{total / 60:.1f} min** (goal: under {BOOK_GOAL_MINUTES} min) |")
    return "\n".join(rows) + "\n"


def save(times: dict[str, float]) -> None:
    """Write the JSON record (with the machine it ran on) and the guide's markdown table."""
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    SAVED.write_text(json.dumps({"machine": machine, "seconds": times}, indent=1) + "\n")
    TABLE.write_text("<!-- Written by `python benchmarks/notebook_times.py --measure`; do not edit. -->\n\n"
                     + markdown_table(times))


def compare(fresh: dict[str, float], saved: dict[str, float]) -> list[str]:
    """The notebooks whose fresh time is off from the saved one by more than the tolerance."""
    problems = []
    for notebook, seconds in saved.items():
        if notebook not in fresh:
            problems.append(f"{notebook}: saved in {SAVED.name} but not in the fresh run")
            continue
        allowed = max(TOLERANCE * seconds, SLACK_SECONDS)
        if abs(fresh[notebook] - seconds) > allowed:
            problems.append(f"{notebook}: {fresh[notebook]:.0f} s now vs {seconds:.0f} s in the guide")
    problems += [f"{notebook}: not in the guide's timings" for notebook in fresh if notebook not in saved]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--measure", action="store_true", help="run the notebooks and save their times")
    action.add_argument("--compare", metavar="FILE",
                        help="the times of a fresh run (pytest --notebook-times FILE)")
    args = parser.parse_args()
    if args.measure:
        times = measure()
        save(times)
        print(markdown_table(times))
        return
    saved = json.loads(SAVED.read_text())["seconds"]
    fresh = json.loads(Path(args.compare).read_text())
    for notebook, seconds in saved.items():
        print(f"{notebook:45s} guide {seconds:6.0f} s   now {fresh.get(notebook, float('nan')):6.0f} s")
    if problems := compare(fresh, saved):
        sys.exit("The instructors' guide's timings are out of date (re-run "
                 "`python benchmarks/notebook_times.py --measure`):\n  " + "\n  ".join(problems))
    print(f"Notebook times match the guide (within {TOLERANCE:.0%} or {SLACK_SECONDS:.0f} s).")


if __name__ == "__main__":
    main()
