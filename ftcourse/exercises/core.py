"""Exercise machinery: run a learner's function against hidden tests and say what is wrong.

Each exercise is a check (hidden tests that raise `ExerciseFailed` with a specific, helpful
message) plus a reference solution. `check` grades an answer; `show_solution` proves the
reference passes and prints its source (the book hides that output behind a toggle).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


class ExerciseFailed(AssertionError):
    """An answer failed a hidden test; the message says what was wrong and how to fix it."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: the chapter it belongs to, its task, its hidden tests and a reference."""

    name: str
    chapter: str
    task: str
    run_tests: Callable[[Callable], None]
    solution: Callable


EXERCISES: dict[str, Exercise] = {}


def exercise(chapter: str, task: str, solution: Callable) -> Callable:
    """Register the decorated hidden-test function as the exercise named after `solution`."""
    def register(run_tests: Callable[[Callable], None]) -> Callable[[Callable], None]:
        name = solution.__name__
        if name in EXERCISES:
            raise ValueError(f"Two exercises are named {name!r}; rename one solution.")
        EXERCISES[name] = Exercise(name, chapter, task, run_tests, solution)
        return run_tests
    return register


def get(name: str) -> Exercise:
    """The exercise called `name`, or an error listing the ones that exist."""
    if name not in EXERCISES:
        raise KeyError(f"No exercise named {name!r}. Known: {', '.join(sorted(EXERCISES))}.")
    return EXERCISES[name]


def check(name: str, answer: Callable) -> bool:
    """Grade `answer` for the exercise `name`: True if it passes every hidden test.

    An answer that still raises NotImplementedError is reported as not attempted (False), so
    a notebook with the exercise left open still runs; a wrong answer raises `ExerciseFailed`.
    """
    task = get(name)
    try:
        task.run_tests(answer)
    except NotImplementedError:
        print(f"{name}: not attempted yet. Replace `raise NotImplementedError` with your code, "
              f"then run this cell again.\n  Task: {task.task}")
        return False
    except ExerciseFailed:
        raise
    except Exception as error:  # a crash inside the answer is a wrong answer, said plainly
        raise ExerciseFailed(f"{name}: your function raised {type(error).__name__}: {error}. "
                             f"Task: {task.task}") from error
    print(f"{name}: correct, all hidden tests pass.")
    return True


def show_solution(name: str) -> None:
    """Check the reference solution of `name` passes and print its source (nothing is returned, so
    a notebook shows the solution once, as printed text)."""
    task = get(name)
    task.run_tests(task.solution)
    print(inspect.getsource(task.solution))


def for_chapter(chapter: str) -> list[Exercise]:
    """The exercises of one chapter (its notebook's file stem, e.g. "05_lora"), in order."""
    return [task for task in EXERCISES.values() if task.chapter == chapter]


def expect_close(got: object, want: Tensor, what: str, *, atol: float = 1e-6,
                 hints: dict[str, Tensor] | None = None) -> None:
    """Fail with a specific message unless tensor `got` equals `want` (same shape, within atol).

    `hints` maps an explanation of a common mistake to the value that mistake produces; if the
    answer matches one, the message names the mistake instead of only saying "wrong".
    """
    if not isinstance(got, Tensor):
        raise ExerciseFailed(f"{what}: expected a torch.Tensor, got {type(got).__name__}.")
    got = got.to(want.dtype)
    if got.shape == want.shape and torch.allclose(got, want, atol=atol, rtol=0):
        return
    for mistake, value in (hints or {}).items():   # before the shape: some mistakes change it
        if value.shape == got.shape and torch.allclose(got, value.to(want.dtype), atol=atol, rtol=0):
            raise ExerciseFailed(f"{what}: {mistake}")
    if got.shape != want.shape:
        raise ExerciseFailed(f"{what}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}.")
    worst = (got - want).abs().max().item()
    raise ExerciseFailed(f"{what}: values differ from the expected ones by up to {worst:.3g} "
                         f"(tolerance {atol:g}).")


def expect_equal(got: object, want: object, what: str, hint: str = "") -> None:
    """Fail with a specific message unless `got == want` (numbers, strings, lists)."""
    if got != want:
        raise ExerciseFailed(f"{what}: expected {want!r}, got {got!r}. {hint}".rstrip())


def expect_number(got: object, want: float, what: str, *, rel: float = 1e-9,
                  hints: dict[str, float] | None = None) -> None:
    """Fail with a specific message unless the number `got` equals `want` (within relative `rel`).

    `hints` works as in `expect_close`: an explanation of a common mistake mapped to the number
    that mistake produces. With rel=0 the numbers must be equal, as counts should be.
    """
    try:
        value = float(got) if not isinstance(got, (str, bytes, bool)) else None
    except (TypeError, ValueError, RuntimeError):   # e.g. a list, or a tensor of several numbers
        value = None
    if value is None:
        raise ExerciseFailed(f"{what}: expected a single number, got {type(got).__name__}.")
    if math.isclose(value, want, rel_tol=rel, abs_tol=1e-12 if rel else 0):
        return
    numbers = f"expected {_readable(want)}, got {_readable(value)}"
    for mistake, wrong in (hints or {}).items():
        if math.isclose(value, wrong, rel_tol=rel, abs_tol=1e-12 if rel else 0):
            raise ExerciseFailed(f"{what}: {mistake} ({numbers})")
    raise ExerciseFailed(f"{what}: {numbers}.")


def _readable(number: float) -> str:
    # Whole numbers in full with thousands separators (counts, bytes), others to 6 digits.
    return f"{int(number):,}" if float(number).is_integer() and abs(number) < 1e18 else f"{number:.6g}"
