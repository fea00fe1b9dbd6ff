"""Every exercise: its reference solution passes its hidden tests, and a planted wrong answer fails
them with the message that names the mistake. Every chapter has 2-4 exercises, checked in its notebook."""

from pathlib import Path

import nbformat
import pytest
from planted_efficient import PLANTED as PLANTED_EFFICIENT
from planted_foundations import PLANTED as PLANTED_FOUNDATIONS
from planted_production import PLANTED as PLANTED_PRODUCTION

from ftcourse.exercises import EXERCISES, ExerciseFailed, check, for_chapter, show_solution

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHAPTERS = sorted(path.stem for path in NOTEBOOKS.glob("[0-9]*.ipynb") if path.stem != "09_claims_ledger")
PLANTED = {**PLANTED_FOUNDATIONS, **PLANTED_EFFICIENT, **PLANTED_PRODUCTION}


def test_every_chapter_has_two_to_four_exercises():
    counts = {chapter: len(for_chapter(chapter)) for chapter in CHAPTERS}
    assert all(2 <= count <= 4 for count in counts.values()), counts
    assert sum(counts.values()) == len(EXERCISES), "an exercise names a chapter that does not exist"


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_reference_solution_passes(name, capsys):
    assert check(name, EXERCISES[name].solution) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_planted_wrong_answers_fail_with_a_specific_message(name):
    assert PLANTED.get(name), f"{name} has no planted wrong answer: a check that cannot fail proves nothing"
    for wrong, message in PLANTED[name]:
        with pytest.raises(ExerciseFailed) as failure:
            check(name, wrong)
        assert message in str(failure.value), f"{name}: {failure.value}"


def test_an_unattempted_exercise_is_reported_not_raised(capsys):
    def not_yet(*args, **kwargs):
        raise NotImplementedError

    name = sorted(EXERCISES)[0]
    assert check(name, not_yet) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_a_crashing_answer_is_a_failure_that_says_why():
    def crashes(*args, **kwargs):
        return {}["missing"]

    with pytest.raises(ExerciseFailed, match="your function raised KeyError"):
        check(sorted(EXERCISES)[0], crashes)


def test_unknown_exercise_lists_the_known_ones():
    with pytest.raises(KeyError, match="Known: "):
        check("no_such_exercise", print)


def test_show_solution_prints_the_reference_source(capsys):
    name = sorted(EXERCISES)[0]
    assert show_solution(name) is None          # printed only, so a notebook shows it once
    assert capsys.readouterr().out.startswith(f"def {name}(")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_notebook_checks_its_exercises_and_hides_their_solutions(chapter):
    cells = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", 4).cells
    for task in for_chapter(chapter):
        checks = [cell for cell in cells if f'check("{task.name}", {task.name})' in cell.source]
        solutions = [cell for cell in cells if f'show_solution("{task.name}")' in cell.source]
        assert len(checks) == 1 and "raise NotImplementedError" in checks[0].source, task.name
        assert len(solutions) == 1 and "hide-output" in solutions[0].metadata.get("tags", []), task.name
