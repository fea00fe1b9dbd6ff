"""What every benchmark shares: interleaved timing, one row per comparison, and the machine.

Timings on a shared machine drift (other jobs come and go), so `interleaved_seconds` runs ours and
the library's in turn, reversing the order every round; each side reports its median, and `spread`
the range of the ratios measured within single rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Comparison:
    """One measured comparison: ours against the library on the same work, and its goal."""

    benchmark: str
    metric: str                    # e.g. "tokens/s" or "seconds"
    ours: float
    library: float
    goal: float | None             # the ratio ours / library must reach; None: reported only
    higher_is_better: bool         # tokens/s: True (ratio >= goal); seconds, bytes: False
    details: dict[str, Any]
    spread: tuple[float, float] | None = None   # lowest and highest ratio of a single round

    @property
    def ratio(self) -> float:
        return self.ours / self.library

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio >= self.goal if self.higher_is_better else self.ratio <= self.goal

    @property
    def goal_text(self) -> str:
        return "none" if self.goal is None else f"{'>=' if self.higher_is_better else '<='} {self.goal:g}x"

    def summary(self) -> str:
        """One printed line: both sides, the ratio and its goal."""
        scale, unit = (1e3, "ms") if self.metric == "seconds" else (1, self.metric)
        return (f"{self.benchmark:48s} ours {self.ours * scale:12.1f}   library {self.library * scale:12.1f} "
                f"{unit}   ratio {self.ratio:.2f} (goal {self.goal_text})")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met, "goal_text": self.goal_text}


def interleaved(runs: dict[str, Callable[[], T]], repeats: int, warmup: int = 1) -> dict[str, list[T]]:
    """What each run returns, `repeats` times, after `warmup` rounds whose results are dropped.

    Every round calls each run once, in an order that flips from one round to the next, so a
    slow spell on a shared machine falls on all sides alike.
    """
    names = list(runs)
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            result = runs[name]()
            if round_index >= warmup:
                results[name].append(result)
    return results


def interleaved_seconds(runs: dict[str, Callable[[], Any]], repeats: int,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock seconds of each run, measured as `interleaved` does."""
    return interleaved({name: partial(_seconds, run) for name, run in runs.items()}, repeats, warmup)


def _seconds(run: Callable[[], Any]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(ours: list[float], library: list[float]) -> tuple[float, float]:
    """The lowest and highest ours / library ratio within one round: how far the noise reaches."""
    ratios = [mine / theirs for mine, theirs in zip(ours, library)]
    return min(ratios), max(ratios)


def set_threads(threads: int) -> int:
    """Use `threads` intra-op threads for every side; return the number torch now uses.

    The benchmarks default to one: on a shared 2-core machine two threads wait on each other
    whenever another job holds a core, and a LoRA layer's step then took anywhere from 6 to 312 ms
    (3.3 to 3.9 ms with one thread).
    """
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def command_line(run: Callable[[bool], list[Comparison]], description: str, quick: str,
                 argv: list[str] | None = None) -> list[Comparison]:
    """The command line every benchmark shares: `--quick` (described by `quick`) and `--threads`;
    runs the benchmark, prints one line per comparison and returns them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every side (default 1)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    rows = run(args.quick)
    for row in rows:
        print(row.summary(), flush=True)
    return rows


def machine() -> dict[str, Any]:
    """The machine and versions a report was measured with."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}
