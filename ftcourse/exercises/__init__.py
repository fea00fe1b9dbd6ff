"""Exercises with automatic checks, one module per concept; three kinds (`core`, `kinds`).

In a notebook: write the function, then `check("lora_forward", lora_forward)`; a wrong answer
gets a message naming the mistake. `show_solution(name)` proves the reference passes and prints it
on opt-in (`reveal=True` or FTCOURSE_SOLUTIONS=show). Predict-then-run:
`check_prediction(name, prediction, measured)`; an open experiment: `check_finding(name, finding)`.
`ftcourse grade` (`grading`) runs every check of submitted notebooks.
"""

from ftcourse.exercises import (  # noqa: F401  (importing a module registers its exercises)
    adapters,
    evaluation,
    ledger,
    lora,
    lora_practice,
    memory,
    preferences,
    production,
    prompts,
    quant,
    quickstart,
    sft,
    transformer,
)
from ftcourse.exercises.core import (
    EXERCISES,
    RESULTS,
    Exercise,
    ExerciseFailed,
    Outcome,
    check,
    for_chapter,
    show_solution,
)
from ftcourse.exercises.kinds import Experiment, Prediction, check_finding, check_prediction

__all__ = ["EXERCISES", "RESULTS", "Exercise", "ExerciseFailed", "Experiment", "Outcome", "Prediction",
           "check", "check_finding", "check_prediction", "for_chapter", "show_solution"]
