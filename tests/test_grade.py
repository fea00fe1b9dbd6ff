"""`ftcourse grade` on planted submissions of chapter 05_lora: right, wrong, left open, never defining
the functions, a cell crashing before the exercises, a dying kernel, a name without a chapter.

The planted notebooks hold only the exercise cells, so each runs in seconds; each gets a fresh
kernel, as a student's would.
"""

import contextlib
import csv
import io
from pathlib import Path

import nbformat
import pytest

from ftcourse.cli import main
from ftcourse.exercises import check_prediction
from ftcourse.exercises.grading import (
    Grade,
    Graded,
    Report,
    Submission,
    find_notebooks,
    grade,
    kernel_grades,
    parse_submission,
)

CHAPTERS = ("05_lora", "08_evaluation", "00_quickstart")
EXERCISES = ("lora_forward", "merge_lora_weight", "lora_parameter_count", "lora_trainable_share",
             "lora_file_size")

FORWARD = {"right": "return x @ W0.T + (alpha / r) * (x @ A.T @ B.T)",
           "wrong": "return x @ W0.T + x @ A.T @ B.T",                          # forgot alpha / r
           "open": "raise NotImplementedError"}
MERGE = {"right": "return W0 + (alpha / r) * (B @ A)",
         "wrong": "W0 += (alpha / r) * (B @ A)\n    return W0",                  # merged in place
         "open": "raise NotImplementedError"}
COUNT = {"right": """D, F = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * (D // config["num_attention_heads"])
    shapes = {"q_proj": (D, D), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (D, D),
              "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}
    return config["num_hidden_layers"] * sum(r * sum(shapes[name]) for name in targets)""",
         "wrong": """D, F = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * (D // config["num_attention_heads"])
    shapes = {"q_proj": (D, D), "k_proj": (D, kv), "v_proj": (D, kv), "o_proj": (D, D),
              "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}
    return sum(r * sum(shapes[name]) for name in targets)""",               # one layer only
         "open": "raise NotImplementedError"}
PREDICTION = {"right": "0.5", "wrong": "2.0", "open": "None"}   # measured: 0.52 % of Llama-3-8B
FINDING = {"right": '{"ranks": [2, 8], "sizes_kb": [85.0, 318.0], '
                    '"conclusion": "linear in r: r (d_in + d_out) numbers per adapted layer"}',
           "wrong": '{"ranks": [2, 8], "sizes_kb": [85.0, 318.0], "size": 1}',   # no conclusion, extra field
           "open": "None"}


def function_cell(name: str, signature: str, body: str, call_check: bool) -> str:
    check = f'\n\ncheck("{name}", {name});' if call_check else ""
    return f"from ftcourse.exercises import check\n\n\ndef {name}({signature}):\n    {body}{check}"


def exercise_cells(answers: str, *, functions: bool = True, call_check: bool = True) -> list[str]:
    """The exercise cells of 05_lora as a student would fill them: every answer "right", "wrong" or "open"."""
    cells = [function_cell("lora_forward", "x, W0, A, B, alpha, r", FORWARD[answers], call_check),
             function_cell("merge_lora_weight", "W0, A, B, alpha, r", MERGE[answers], call_check),
             function_cell("lora_parameter_count", "config, targets, r", COUNT[answers], call_check)]
    cells = cells if functions else []
    return cells + [
        f"prediction = {PREDICTION[answers]}  # your prediction: a percentage\n"
        "from ftcourse.exercises import check_prediction\nfrom ftcourse.lora import LoRA\n"
        "from ftcourse.params import REAL_MODELS, count_lora_parameters, count_parameters\n"
        'config = REAL_MODELS["Llama-3-8B"]\n'
        'measured = 100 * count_lora_parameters(config, LoRA(r=16, targets="all-linear")) / '
        "count_parameters(config).total\n"
        'check_prediction("lora_trainable_share", prediction, measured);',
        f"finding = {FINDING[answers]}\nfrom ftcourse.exercises import check_finding\n"
        'check_finding("lora_file_size", finding);']


def write_notebook(path: Path, sources: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Lab 05")]
                                        + [nbformat.v4.new_code_cell(source) for source in sources])
    nbformat.write(notebook, path)
    return path


def planted(folder: Path) -> Path:
    """A lab's submissions folder: one notebook per planted student, plus a stray checkpoint copy."""
    lab_setting = ("import os\nfrom pathlib import Path\nfrom ftcourse.exercises import show_solution\n"
                   'assert os.environ["FTCOURSE_SOLUTIONS"] == "hide"\n'
                   f"assert Path.cwd() == Path({str(folder.resolve())!r}), Path.cwd()\n"
                   'show_solution("lora_forward", reveal=True)')   # hidden in a lab, without an error
    write_notebook(folder / "alice-05_lora.ipynb", exercise_cells("right") + [lab_setting])
    write_notebook(folder / "bob_05_lora.ipynb", exercise_cells("wrong"))
    write_notebook(folder / "05_lora carol.ipynb", exercise_cells("open"))
    write_notebook(folder / "dave-05_lora.ipynb", exercise_cells("right", functions=False))
    write_notebook(folder / "erin" / "05_lora.ipynb",      # never calls check; a cell fails first
                   ['open("data-only-on-my-laptop.csv")'] + exercise_cells("right", call_check=False))
    write_notebook(folder / "frank-05_lora.ipynb", ["import os\nos._exit(1)"] + exercise_cells("right"))
    write_notebook(folder / "notes.ipynb", ["1 + 1"])
    write_notebook(folder / ".ipynb_checkpoints" / "alice-05_lora-checkpoint.ipynb", exercise_cells("open"))
    return folder


@pytest.fixture(scope="module")
def graded_lab(tmp_path_factory):
    """The planted lab graded once through the command line: exit code, what it printed, CSV rows, summary."""
    folder = planted(tmp_path_factory.mktemp("lab") / "submissions")
    out = tmp_path_factory.mktemp("lab") / "grades"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(["grade", str(folder), "--out", str(out), "--timeout", "120"])
    with open(out / "grades.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return code, printed.getvalue(), rows, (out / "summary.md").read_text()


@pytest.mark.slow
def test_grade_csv_has_one_row_per_student_and_exercise(graded_lab):
    code, _, rows, _ = graded_lab
    assert code == 0                           # students failing exercises is not a grading error
    assert list(rows[0]) == ["student", "chapter", "exercise", "passed", "message"]
    passed = {(row["student"], row["exercise"]): row["passed"] == "True" for row in rows if row["exercise"]}
    everything, functions = dict.fromkeys(EXERCISES, True), EXERCISES[:3]
    want = {"alice": everything,
            "bob": {**dict.fromkeys(EXERCISES, False), "lora_trainable_share": True},  # a wrong guess counts
            "carol": dict.fromkeys(EXERCISES, False),
            "dave": {**everything, **dict.fromkeys(functions, False)},
            "erin": everything,
            "frank": dict.fromkeys(EXERCISES, False)}
    assert passed == {(student, name): ok for student, grades in want.items() for name, ok in grades.items()}
    assert {row["chapter"] for row in rows if row["exercise"]} == {"05_lora"}


@pytest.mark.slow
def test_grade_messages_name_the_mistake(graded_lab):
    message = {(row["student"], row["exercise"]): row["message"] for row in graded_lab[2]}
    assert "forgot the scaling" in message["bob", "lora_forward"]
    assert "changed W0 in place" in message["bob", "merge_lora_weight"]
    assert "counted one transformer layer" in message["bob", "lora_parameter_count"]
    assert "missed by" in message["bob", "lora_trainable_share"]
    assert "right (off by" in message["alice", "lora_trainable_share"]
    assert "missing field 'conclusion'" in message["bob", "lora_file_size"]
    assert "extra field 'size'" in message["bob", "lora_file_size"]
    assert all("not attempted" in message["carol", name] for name in EXERCISES)
    assert "not defined" in message["dave", "lora_forward"]
    assert all("not graded: the kernel died in cell 2" in message["frank", name] for name in EXERCISES)
    assert "no chapter in the file name" in message["notes", ""]


@pytest.mark.slow
def test_grade_summary_counts_and_failures(graded_lab):
    _, printed, _, summary = graded_lab
    assert summary in printed
    for student, passed in {"alice": 5, "bob": 1, "carol": 0, "dave": 2, "erin": 5, "frank": 0}.items():
        assert f"| {student} | {passed} | 5 |" in summary
    assert "| 05_lora | lora_forward | 2/6 | 33% |" in summary
    assert "| 05_lora | lora_trainable_share | 4/6 | 67% |" in summary
    failed = summary.split("## Notebooks that failed")[1].split("## Cells")[0]
    assert "frank-05_lora.ipynb: the kernel died in cell 2" in failed and "notes.ipynb: no chapter" in failed
    assert "checkpoint" not in summary          # .ipynb_checkpoints is skipped
    raised = summary.split("## Cells that raised")[1]
    assert "05_lora.ipynb, cell 2: FileNotFoundError" in raised   # erin's; the rest was graded
    assert raised.count("\n- ") == 1                # alice's lab-setting cell passed: hidden, in her folder
    assert "ExerciseFailed" not in raised       # wrong answers are in the CSV, not here


@pytest.mark.slow
def test_grade_reports_a_cell_that_runs_past_the_timeout_and_stops_its_kernel(tmp_path):
    import psutil  # installed with accelerate

    notebook = write_notebook(tmp_path / "gina-05_lora.ipynb", ["import time\ntime.sleep(60)"])
    [graded] = grade([notebook], timeout=2).graded
    assert graded.failure == "cell 2 ran longer than the 2 s timeout (--timeout)"
    assert [grade.exercise for grade in graded.grades] == list(EXERCISES)
    assert not any(grade.passed for grade in graded.grades)
    kernels = [child for child in psutil.Process().children(recursive=True)
               if "ipykernel_launcher" in " ".join(child.cmdline())]
    assert kernels == [], "a kernel outlived its notebook's grading"


@pytest.mark.parametrize("path, student, chapter", [
    ("alice-05_lora.ipynb", "alice", "05_lora"),
    ("submissions/alice/05_lora.ipynb", "alice", "05_lora"),
    ("Bob Smith_05_LoRA (1).ipynb", "Bob Smith-(1)", "05_lora"),
    ("lab/carol-08_evaluation-final.ipynb", "carol-final", "08_evaluation"),
    ("lab/notes.ipynb", "notes", None),
])
def test_parse_submission_reads_student_and_chapter(path, student, chapter):
    assert parse_submission(Path(path), CHAPTERS) == Submission(Path(path), student, chapter)


def test_find_notebooks_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file or folder: .*missing"):
        find_notebooks([tmp_path / "missing"])
    with pytest.raises(ValueError, match=r"No notebooks \(.ipynb\) found"):
        find_notebooks([tmp_path])
    (tmp_path / "answers.py").write_text("")
    with pytest.raises(ValueError, match=r"Not notebooks \(.ipynb\): .*answers.py"):
        find_notebooks([tmp_path / "answers.py"])


def test_cli_grade_bad_input_exits_with_a_message(tmp_path, capsys):
    assert main(["grade", str(tmp_path), "--out", str(tmp_path / "grades")]) == 2
    assert "ftcourse grade: error: No notebooks" in capsys.readouterr().err
    assert not (tmp_path / "grades").exists()


def test_kernel_grades_run_hidden_tests_and_take_the_last_outcome(recorded, capsys):
    namespace = {}
    exec(function_cell("lora_forward", "x, W0, A, B, alpha, r", FORWARD["right"], False), namespace)
    exec(function_cell("merge_lora_weight", "W0, A, B, alpha, r", MERGE["wrong"], False), namespace)
    check_prediction("lora_trainable_share", None, 0.52)
    check_prediction("lora_trainable_share", 1.0, 0.52)          # the second try is the one graded
    capsys.readouterr()
    rows = {row["name"]: row for row in kernel_grades("05_lora", namespace)}
    assert capsys.readouterr().out == ""                         # grading prints nothing itself
    assert list(rows) == list(EXERCISES)
    assert rows["lora_forward"]["passed"] and not rows["merge_lora_weight"]["passed"]
    assert "changed W0 in place" in rows["merge_lora_weight"]["message"]
    assert rows["lora_parameter_count"]["message"].startswith("not defined")
    assert rows["lora_trainable_share"]["passed"]
    assert "missed by 92%" in rows["lora_trainable_share"]["message"]
    assert rows["lora_file_size"] == {
        "name": "lora_file_size", "passed": False,
        "message": 'not run: the cell with check_finding("lora_file_size", finding) never ran'}


def test_report_summary_counts(tmp_path):
    def notebook(student, outcomes, failure=None):
        grades = [Grade(student, "05_lora", name, ok, "") for name, ok in outcomes.items()]
        return Graded(Submission(tmp_path / f"{student}.ipynb", student, "05_lora"), grades, failure)

    report = Report([notebook("ann", {"a": True, "b": True}), notebook("ben", {"a": True, "b": False}),
                     notebook("cy", {"a": False, "b": False}, failure="the kernel died in cell 3")])
    summary = report.summary()
    assert "3 notebook(s), 3 student(s)" in summary
    assert "| ann | 2 | 2 |" in summary and "| ben | 1 | 2 |" in summary and "| cy | 0 | 2 |" in summary
    assert "| 05_lora | a | 2/3 | 67% |" in summary and "| 05_lora | b | 1/3 | 33% |" in summary
    assert "cy.ipynb: the kernel died in cell 3" in summary
    csv_path, _ = report.write(tmp_path / "out")
    lines = csv_path.read_text().splitlines()
    assert lines[:2] == ["student,chapter,exercise,passed,message", "ann,05_lora,a,True,"]
