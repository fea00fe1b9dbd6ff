"""Every function exercise: its reference solution passes its hidden tests, and a planted wrong answer
fails them with the message that names the mistake. Every chapter has 2-4 of them, checked in its
notebook. Predict-then-run and open experiments: not attempted, wrong form (every problem listed), a
right and a wrong prediction. Solutions show only on opt-in; every check is recorded for grading."""

from pathlib import Path

import nbformat
import pytest
from planted_efficient import PLANTED as PLANTED_EFFICIENT
from planted_foundations import PLANTED as PLANTED_FOUNDATIONS
from planted_production import PLANTED as PLANTED_PRODUCTION

from ftcourse.exercises import (
    EXERCISES,
    ExerciseFailed,
    Outcome,
    check,
    check_finding,
    check_prediction,
    for_chapter,
    show_solution,
)
from ftcourse.exercises.core import register
from ftcourse.exercises.kinds import Choice, Field, Number, Prediction

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = sorted(path.stem for path in NOTEBOOKS.glob("[0-9]*.ipynb"))
PLANTED = {**PLANTED_FOUNDATIONS, **PLANTED_EFFICIENT, **PLANTED_PRODUCTION}
FUNCTIONS = sorted(name for name, task in EXERCISES.items() if task.kind == "function")


def test_every_chapter_has_function_exercises_a_prediction_and_an_open_experiment():
    kinds = {chapter: [task.kind for task in for_chapter(chapter)] for chapter in CHAPTERS}
    functions = {chapter: found.count("function") for chapter, found in kinds.items()
                 if chapter != "09_claims_ledger"}                          # the ledger page has none
    assert all(2 <= count <= 4 for count in functions.values()), functions
    assert all({"prediction", "experiment"} <= set(kinds[chapter]) for chapter in CHAPTERS), kinds
    assert sum(len(for_chapter(chapter)) for chapter in CHAPTERS) == len(EXERCISES), \
        "an exercise names a chapter that does not exist"
    assert {task.kind for task in EXERCISES.values()} == {"function", "prediction", "experiment"}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_reference_solution_passes(name, capsys):
    assert check(name, EXERCISES[name].solution) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name", FUNCTIONS)
def test_planted_wrong_answers_fail_with_a_specific_message(name):
    assert PLANTED.get(name), f"{name} has no planted wrong answer: a check that cannot fail proves nothing"
    for wrong, message in PLANTED[name]:
        with pytest.raises(ExerciseFailed) as failure:
            check(name, wrong)
        assert message in str(failure.value), f"{name}: {failure.value}"


def test_an_unattempted_exercise_is_reported_not_raised(capsys):
    def not_yet(*args, **kwargs):
        raise NotImplementedError

    name = FUNCTIONS[0]
    assert check(name, not_yet) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_a_crashing_answer_is_a_failure_that_says_why():
    def crashes(*args, **kwargs):
        return {}["missing"]

    with pytest.raises(ExerciseFailed, match="your function raised KeyError"):
        check(FUNCTIONS[0], crashes)


def test_unknown_exercise_lists_the_known_ones():
    with pytest.raises(KeyError, match="Known: "):
        check("no_such_exercise", print)


@pytest.mark.parametrize("mode, reveal, shown", [(None, False, False), (None, True, True),
                                                 ("show", False, True), ("hide", False, False),
                                                 ("hide", True, False)])
def test_show_solution_prints_the_source_only_on_opt_in(monkeypatch, capsys, mode, reveal, shown):
    if mode is None:
        monkeypatch.delenv("FTCOURSE_SOLUTIONS", raising=False)
    else:
        monkeypatch.setenv("FTCOURSE_SOLUTIONS", mode)
    assert show_solution("lora_forward", reveal=reveal) is None   # printed only: a notebook shows it once
    out = capsys.readouterr().out
    assert out.startswith("def lora_forward(") == shown
    if not shown:
        assert out.count("\n") == 1
        assert ("instructor has hidden" in out) == (mode == "hide")
        assert ('show_solution("lora_forward", reveal=True)' in out) == (mode is None)


def test_show_solution_runs_the_hidden_tests_even_when_hidden(monkeypatch):
    monkeypatch.setenv("FTCOURSE_SOLUTIONS", "hide")
    task = EXERCISES["lora_forward"]
    broken = type(task)(task.name, task.chapter, task.task, task.run_tests, PLANTED["lora_forward"][0][0])
    monkeypatch.setitem(EXERCISES, "lora_forward", broken)      # a reference that fails its tests
    with pytest.raises(ExerciseFailed, match="forgot the scaling"):
        show_solution("lora_forward", reveal=True)


def test_show_solution_rejects_a_bad_setting_and_other_kinds(monkeypatch):
    monkeypatch.setenv("FTCOURSE_SOLUTIONS", "yes")
    with pytest.raises(ValueError, match="FTCOURSE_SOLUTIONS='yes' is not allowed: use one of show, hide"):
        show_solution("lora_forward")
    monkeypatch.setenv("FTCOURSE_SOLUTIONS", "show")
    with pytest.raises(TypeError, match="predict-then-run exercise: it has no solution.*the measurement"):
        show_solution("lora_trainable_share")
    with pytest.raises(TypeError, match="is an open experiment: it has no solution to show"):
        show_solution("lora_file_size")


def test_makefile_shows_solutions_in_the_book_build():
    # make book, make test (nbval, run_hub.sh, notebook_times.py) all inherit this from make
    assert "export FTCOURSE_SOLUTIONS := show" in (ROOT / "Makefile").read_text().splitlines()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_notebook_checks_its_exercises_and_hides_their_solutions(chapter):
    cells = nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", 4).cells
    for task in (task for task in for_chapter(chapter) if task.kind == "function"):
        checks = [cell for cell in cells if f'check("{task.name}", {task.name})' in cell.source]
        solutions = [cell for cell in cells if f'show_solution("{task.name}")' in cell.source]
        assert len(checks) == 1 and "raise NotImplementedError" in checks[0].source, task.name
        assert len(solutions) == 1 and "hide-output" in solutions[0].metadata.get("tags", []), task.name


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_each_notebook_runs_its_predictions_and_experiments(chapter):
    sources = [cell.source for cell in nbformat.read(NOTEBOOKS / f"{chapter}.ipynb", 4).cells]
    for task in (task for task in for_chapter(chapter) if task.kind != "function"):
        variable = "prediction" if task.kind == "prediction" else "finding"
        call = (f'check_prediction("{task.name}", prediction, measured)' if task.kind == "prediction"
                else f'check_finding("{task.name}", finding)')
        cells = [source for source in sources if call in source]
        assert len(cells) == 1 and f"{variable} = None" in cells[0], f"{chapter}: no cell with {call}"


# ---------------------------------------------------------------- predict, then run; open experiments

SHARE = "lora_trainable_share"   # a Number in [0, 100] (%), right within 25%
MEASURED = 0.5223


def test_prediction_not_attempted_returns_false(recorded, capsys):
    assert check_prediction(SHARE, None, MEASURED) is False
    assert "not attempted: write your prediction first (a number in [0, 100] (%))" in capsys.readouterr().out
    assert recorded[-1].passed is False


@pytest.mark.parametrize("prediction", ["0.5", 101, -1, True, [0.5]])
def test_prediction_of_the_wrong_form_names_the_form(recorded, prediction):
    with pytest.raises(ExerciseFailed, match=r"must be a number in \[0, 100\] \(%\), got"):
        check_prediction(SHARE, prediction, MEASURED)
    assert recorded[-1].passed is False


def test_right_prediction_passes_and_says_so(recorded, capsys):
    assert check_prediction(SHARE, 0.6, MEASURED) is True
    out = capsys.readouterr().out
    assert "your prediction 0.6%, measured 0.5223%: right (off by 15%, within the 25% allowed)" in out
    assert recorded == [Outcome(SHARE, True, out.strip())]


def test_wrong_but_valid_prediction_passes_as_committed(recorded, capsys):
    assert check_prediction(SHARE, 2, MEASURED) is True        # committing to a prediction is the exercise
    assert "measured 0.5223%: missed by 283%" in capsys.readouterr().out
    assert recorded[-1].passed is True and "missed by" in recorded[-1].message


@pytest.fixture
def choice_exercise():
    """A throwaway Choice prediction, removed from the registry afterwards."""
    form = Choice(("grows", "shrinks"), right=lambda ratio: "grows" if ratio > 1 else "shrinks")
    task = register(Prediction("throwaway_choice", "05_lora", "Does the file grow with r?", form))
    yield task.name
    del EXERCISES[task.name]


def test_choice_prediction_is_judged_by_the_measurement(choice_exercise, recorded, capsys):
    assert check_prediction(choice_exercise, "grows", 3.7) is True
    assert "your prediction 'grows', measured 3.7: right." in capsys.readouterr().out
    assert check_prediction(choice_exercise, "shrinks", 3.7) is True
    assert "missed: the measurement says 'grows'" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match="must be one of 'grows', 'shrinks', got 'doubles'"):
        check_prediction(choice_exercise, "doubles", 3.7)


FILE_SIZE = "lora_file_size"
RIGHT_FINDING = {"ranks": [2, 8, 32], "sizes_kb": [84.8, 318.4, 1252.4],
                 "conclusion": "linear in r: each adapted layer stores r (d_in + d_out) numbers"}


def test_finding_not_attempted_shows_the_form(recorded, capsys):
    assert check_finding(FILE_SIZE, None) is False
    out = capsys.readouterr().out
    assert 'not attempted: fill in `finding = {"ranks": a list of at least 2 int >= 1' in out
    assert recorded[-1].passed is False


def test_finding_of_the_wrong_form_lists_every_problem(recorded):
    wrong = {"ranks": [2, 8.5], "sizes_kb": "318 kB", "notes": "", "conclusion": "linear"}
    with pytest.raises(ExerciseFailed) as failure:
        check_finding(FILE_SIZE, wrong)
    message = str(failure.value)
    assert "4 problem(s)" in message
    for problem in ("extra field 'notes'", "ranks must be a list of at least 2 int >= 1, got [2, 8.5]",
                    "sizes_kb must be a list of at least 2 float >= 0, got str",
                    "conclusion must be a str of at least 20 characters"):
        assert problem in message
    assert "Fix `finding = ...`" in message and recorded[-1].passed is False
    with pytest.raises(ExerciseFailed, match="(?s)missing field 'ranks'.*missing field 'conclusion'"):
        check_finding(FILE_SIZE, {"sizes_kb": [1.0, 2.0]})
    with pytest.raises(ExerciseFailed, match="finding must be a dict"):
        check_finding(FILE_SIZE, [2, 8])


def test_finding_consistency_checks_run_once_the_fields_are_right(recorded):
    with pytest.raises(ExerciseFailed, match="sizes_kb has 2 values for 3 ranks"):
        check_finding(FILE_SIZE, {**RIGHT_FINDING, "sizes_kb": [84.8, 318.4]})
    with pytest.raises(ExerciseFailed, match=r"ranks \[8, 8, 32\] repeat a rank"):
        check_finding(FILE_SIZE, {**RIGHT_FINDING, "ranks": [8, 8, 32]})


def test_right_finding_passes(recorded, capsys):
    assert check_finding(FILE_SIZE, RIGHT_FINDING) is True
    assert "has the required form" in capsys.readouterr().out
    assert recorded == [Outcome(FILE_SIZE, True, recorded[-1].message)]


def test_every_check_records_its_outcome(recorded):
    name = "lora_forward"
    check(name, EXERCISES[name].solution)
    with pytest.raises(ExerciseFailed):
        check(name, PLANTED[name][0][0])
    assert [(outcome.name, outcome.passed) for outcome in recorded] == [(name, True), (name, False)]
    assert PLANTED[name][0][1] in recorded[-1].message


def test_checking_an_exercise_with_the_wrong_call_says_which_fits():
    with pytest.raises(TypeError, match=r'predict-then-run exercise, not a function exercise: check it with '
                                        r'check_prediction\("lora_trainable_share", prediction, measured\)'):
        check(SHARE, print)
    with pytest.raises(TypeError, match=r'function exercise, not an open experiment.*check\("lora_forward"'):
        check_finding("lora_forward", {})


def test_forms_reject_bad_registrations():
    with pytest.raises(ValueError, match="list with item=int or item=float"):
        Field(list)
    with pytest.raises(ValueError, match="type must be int, float or str"):
        Field(dict)
    with pytest.raises(ValueError, match="measurement must be a number"):
        Number(rel=0.1).judge(1.0, "0.5")
