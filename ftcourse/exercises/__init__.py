"""Exercises with automatic checks, two to four per chapter, one module per concept.

In a notebook: write the function, then `check("lora_forward", lora_forward)`; a wrong answer
gets a message naming the mistake. `show_solution(name)` prints the reference solution.
"""

from ftcourse.exercises import (  # noqa: F401  (importing a module registers its exercises)
    evaluation,
    lora,
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
    Exercise,
    ExerciseFailed,
    check,
    for_chapter,
    show_solution,
)

__all__ = ["EXERCISES", "Exercise", "ExerciseFailed", "check", "for_chapter", "show_solution"]
