"""Run the CPU benchmarks and write the report: JSON, a markdown table and a plot of the ratios.

    python benchmarks/run_all.py                 # `make bench`: every benchmark, ~6 min on 2 cores
    python benchmarks/run_all.py --quick         # tiny sizes, a few iterations (what the tests run)
    python benchmarks/run_all.py --only nf4      # one of train_throughput, lora_layer, nf4, load_base

Writes report.json, report.md (benchmark, ours, library, ratio, goal, met?) and ratios.png (one bar
per ratio, with its goal) into --out, with the machine and the command. The notebooks' run times
join the report when `benchmarks/notebook_times.py --measure` has saved them (goal: the whole book
in under 10 minutes on the slower machine).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import load_base
import lora_layer
import nf4
import train_throughput
from comparison import Comparison, machine, set_threads
from notebook_times import BOOK_GOAL_MINUTES, SAVED, goals, markdown_table, slower_machine_factor

BENCHMARKS = {"train_throughput": train_throughput.run, "lora_layer": lora_layer.run, "nf4": nf4.run,
              "load_base": load_base.run}
RESULTS = Path(__file__).resolve().parent / "results"


def notebook_times(path: Path = SAVED) -> dict[str, Any] | None:
    """The saved notebook run times with the whole book's total against its goal, and the factor that
    scales them to the slower machine, or None."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    factor = slower_machine_factor(saved)
    return {**saved, "total_minutes": sum(saved["seconds"].values()) / 60, "goal_minutes": BOOK_GOAL_MINUTES,
            "factor": factor, **goals(saved["seconds"], saved.get("book_side_by_side_seconds"), factor)}


def value_text(value: float, metric: str) -> str:
    if metric == "seconds":
        return f"{value * 1e3:.1f} ms"
    if metric == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if metric == "FLOP/s":
        return f"{value / 1e9:.1f} GFLOP/s"
    return f"{value:,.0f} {metric}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a page: the table of comparisons, then the notebook times if any."""
    info = report["machine"]
    lines = ["# Benchmarks: ours / library", "",
             f"`{report['command']}` on {report['date']}: {info['cpus']} CPUs ({info['processor']}), "
             f"{info['torch_threads']} torch thread(s), torch {info['torch']}, Python {info['python']}.", "",
             "Ours and library: medians over interleaved rounds. Ratio: ours / library, with the lowest",
             "and highest ratio of a single round in brackets.", "",
             "| benchmark | ours | library | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    for row in report["comparisons"]:
        met = {True: "yes", False: "**no**", None: "(reported)"}[row["met"]]
        ours, library = (value_text(row[side], row["metric"]) for side in ("ours", "library"))
        ratio = f"{row['ratio']:.2f}x" + (" ({:.2f}-{:.2f})".format(*row["spread"]) if row["spread"] else "")
        lines.append(f"| {row['benchmark']} | {ours} | {library} | {ratio} | {row['goal_text']} | {met} |")
    if notebooks := report["notebooks"]:
        met = "met" if notebooks["met"] else "**not met**"
        lines += ["", f"## Notebook run times (goals, on the slower machine: {met})", "",
                  markdown_table(notebooks["seconds"], notebooks.get("machine"),
                                 notebooks.get("book_side_by_side_seconds"), notebooks["factor"]).rstrip()]
    return "\n".join(lines) + "\n"


def plot(rows: list[Comparison], path: Path) -> None:
    """One horizontal bar per ratio (green: goal met, red: missed, grey: no goal) with the range of
    single rounds as an error bar, and its goal as a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    positions = range(len(rows))[::-1]
    colors = ["tab:gray" if row.met is None else "tab:green" if row.met else "tab:red" for row in rows]
    low, high = zip(*(row.spread or (row.ratio, row.ratio) for row in rows))
    errors = [[row.ratio - lo for row, lo in zip(rows, low)], [hi - row.ratio for row, hi in zip(rows, high)]]
    ax.barh(list(positions), [row.ratio for row in rows], color=colors, xerr=errors, capsize=3)
    for y, row, right in zip(positions, rows, high):
        if row.goal is not None:
            ax.plot([row.goal, row.goal], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(max(right, row.goal or 0), y, f"  {row.ratio:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_yticks(list(positions), [row.benchmark for row in rows], fontsize=8)
    ax.set_xlabel("ours / library; black tick: the goal\n"
                  "(tokens/s and MFU: higher is better; time, memory: lower)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few iterations (for the tests)")
    parser.add_argument("--only", choices=list(BENCHMARKS), action="append", help="this one (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every side (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the report files")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rows: list[Comparison] = []
    for name in args.only or BENCHMARKS:
        print(f"running {name}...", flush=True)
        rows += BENCHMARKS[name](quick=args.quick)
    report = {"command": " ".join(["python benchmarks/run_all.py", *argv]),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "quick": args.quick, "comparisons": [row.as_dict() for row in rows],
              "notebooks": notebook_times()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "report.md").write_text(markdown(report))
    plot(rows, args.out / "ratios.png")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
