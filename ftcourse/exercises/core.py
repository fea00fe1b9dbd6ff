"""Exercise machinery: the registry of every chapter's exercises, and checks that say what is wrong.

Three kinds of exercise share one registry, `EXERCISES`, each with its chapter and `kind`:
- "function": the learner writes a function; `check` runs hidden tests (which raise
  `ExerciseFailed` with a specific, helpful message) and `show_solution` proves the reference
  passes them, printing its source only when the learner or the instructor opts in;
- "prediction" and "experiment" (`ftcourse.exercises.kinds`): predict-then-run, and a small open
  experiment whose answer's form is checked.
Every check records its outcome in `RESULTS`, which `ftcourse grade` reads in the learner's kernel.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor


class ExerciseFailed(AssertionError):
    """An answer failed a hidden test; the message says what was wrong and how to fix it."""


class Registered(Protocol):
    """What every kind of exercise has: a name, its chapter, its task, and its kind."""

    name: str
    chapter: str
    task: str
    kind: ClassVar[str]


@dataclass(frozen=True)
class Exercise:
    """One function exercise: the chapter it belongs to, its task, its hidden tests and a reference."""

    name: str
    chapter: str
    task: str
    run_tests: Callable[[Callable], None]
    solution: Callable
    kind: ClassVar[str] = "function"


@dataclass(frozen=True)
class Outcome:
    """What one check concluded: the grader's row for the exercise `name`."""

    name: str
    passed: bool
    message: str


EXERCISES: dict[str, Registered] = {}
RESULTS: list[Outcome] = []        # every check's outcome in this process, oldest first

# How a learner checks each kind of exercise in a notebook, for the messages.
CALLS = {"function": 'check("{name}", {name})',
         "prediction": 'check_prediction("{name}", prediction, measured)',
         "experiment": 'check_finding("{name}", finding)'}
KINDS = {"function": "a function exercise", "prediction": "a predict-then-run exercise",
         "experiment": "an open experiment"}
SOLUTIONS_VARIABLE = "FTCOURSE_SOLUTIONS"
SOLUTIONS_MODES = ("show", "hide")   # unset: hidden unless the learner passes reveal=True


def register(task: Registered) -> Registered:
    """Add `task` to `EXERCISES` under its name, refusing a name that is taken."""
    if task.name in EXERCISES:
        raise ValueError(f"Two exercises are named {task.name!r}; rename one.")
    EXERCISES[task.name] = task
    return task


def exercise(chapter: str, task: str, solution: Callable) -> Callable:
    """Register the decorated hidden-test function as the exercise named after `solution`."""
    def register_tests(run_tests: Callable[[Callable], None]) -> Callable[[Callable], None]:
        register(Exercise(solution.__name__, chapter, task, run_tests, solution))
        return run_tests
    return register_tests


def get(name: str, kind: str | None = None) -> Registered:
    """The exercise called `name` (of `kind`, when given), or an error that says which call fits it."""
    if name not in EXERCISES:
        raise KeyError(f"No exercise named {name!r}. Known: {', '.join(sorted(EXERCISES))}.")
    task = EXERCISES[name]
    if kind is not None and task.kind != kind:
        raise TypeError(f"{name!r} is {KINDS[task.kind]}, not {KINDS[kind]}: check it with "
                        f"{CALLS[task.kind].format(name=name)}.")
    return task


def record(name: str, passed: bool, message: str) -> Outcome:
    """Append one check's outcome to `RESULTS` (the grader reads the last one per exercise)."""
    outcome = Outcome(name, passed, message)
    RESULTS.append(outcome)
    return outcome


def check(name: str, answer: Callable) -> bool:
    """Grade `answer` for the function exercise `name`: True if it passes every hidden test.

    An answer that still raises NotImplementedError is reported as not attempted (False), so
    a notebook with the exercise left open still runs; a wrong answer raises `ExerciseFailed`.
    """
    task = get(name, "function")
    try:
        task.run_tests(answer)
    except NotImplementedError:
        message = (f"{name}: not attempted yet. Replace `raise NotImplementedError` with your code, "
                   f"then run this cell again.\n  Task: {task.task}")
        print(record(name, False, message).message)
        return False
    except ExerciseFailed as failure:
        record(name, False, str(failure))
        raise
    except Exception as error:  # a crash inside the answer is a wrong answer, said plainly
        message = f"{name}: your function raised {type(error).__name__}: {error}. Task: {task.task}"
        record(name, False, message)
        raise ExerciseFailed(message) from error
    print(record(name, True, f"{name}: correct, all hidden tests pass.").message)
    return True


def solutions_mode() -> str | None:
    """`FTCOURSE_SOLUTIONS` ("show", "hide"), or None when unset; any other value is an error."""
    mode = os.environ.get(SOLUTIONS_VARIABLE) or None
    if mode not in (None, *SOLUTIONS_MODES):
        raise ValueError(f"{SOLUTIONS_VARIABLE}={mode!r} is not allowed: use one of "
                         f"{', '.join(SOLUTIONS_MODES)}, or leave it unset (then solutions are hidden "
                         "unless show_solution(name, reveal=True)).")
    return mode


def show_solution(name: str, reveal: bool = False) -> None:
    """Check the reference solution of `name` passes, then print its source if the learner opted in.

    The hidden tests always run (so executing a notebook proves every reference passes). The source
    is printed with `reveal=True` or FTCOURSE_SOLUTIONS=show (the book build), never with
    FTCOURSE_SOLUTIONS=hide (an instructor's lab); otherwise one line says how to reveal it.
    Nothing is returned, so a notebook shows the solution once, as printed text.
    """
    mode = solutions_mode()
    task = get(name)
    if task.kind != "function":
        answer = ("Its check prints the measurement, which is the answer." if task.kind == "prediction"
                  else "Its check looks at the form of your finding; the conclusion is yours.")
        raise TypeError(f"{name!r} is {KINDS[task.kind]}: it has no solution to show. {answer}")
    task.run_tests(task.solution)
    if mode == "hide":
        print(f"{name}: the instructor has hidden solutions for this lab ({SOLUTIONS_VARIABLE}=hide).")
    elif reveal or mode == "show":
        print(inspect.getsource(task.solution))
    else:
        print(f'{name}: solution hidden. Try first; to see it, run show_solution("{name}", reveal=True) '
              f"or set {SOLUTIONS_VARIABLE}=show.")


def for_chapter(chapter: str) -> list[Registered]:
    """The exercises of one chapter (its notebook's file stem, e.g. "05_lora") of every kind, in order."""
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
