"""Grade a lab: execute each submitted notebook, run every exercise check of its chapter, report.

`grade(paths)` finds the notebooks (files, or folders searched recursively), reads the chapter
(`05_lora`) and the student (`alice`) from each path, executes the notebook in a fresh kernel of
this Python with FTCOURSE_SOLUTIONS=hide, then runs one more cell in that kernel,
`kernel_grades`: a function exercise is graded on the function of its name in the kernel's
globals, a prediction or experiment by the last outcome its check recorded (`core.RESULTS`).
`Report.write` saves grades.csv (student, chapter, exercise, passed, message) and summary.md.
It runs the students' code: grade in a throwaway environment.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path

from ftcourse.exercises.core import (
    CALLS,
    EXERCISES,
    RESULTS,
    ExerciseFailed,
    Outcome,
    check,
    for_chapter,
)

COLUMNS = ("student", "chapter", "exercise", "passed", "message")
MARKER = "FTCOURSE-GRADES "   # starts the line of JSON the grading cell prints
SEPARATORS = "-_. "


@dataclass(frozen=True)
class Grade:
    """One row of grades.csv: how one student did on one exercise."""

    student: str
    chapter: str
    exercise: str
    passed: bool
    message: str


@dataclass(frozen=True)
class Submission:
    """A submitted notebook, with the student and chapter read from its path (chapter None: not found)."""

    path: Path
    student: str
    chapter: str | None


@dataclass(frozen=True)
class Graded:
    """What grading one notebook gave: its rows, why it failed to execute (if it did), its cell errors."""

    submission: Submission
    grades: list[Grade]
    failure: str | None = None
    cell_errors: list[str] = field(default_factory=list)


def find_notebooks(paths: Sequence[str | Path]) -> list[Path]:
    """The .ipynb files among `paths` and (recursively) inside the folders among them, sorted;
    hidden folders such as .ipynb_checkpoints are skipped."""
    paths = [Path(path) for path in paths]
    if missing := [str(path) for path in paths if not path.exists()]:
        raise FileNotFoundError(f"No such file or folder: {', '.join(missing)}. Pass notebooks or folders "
                                "of notebooks that exist.")
    if not_notebooks := [str(path) for path in paths if path.is_file() and path.suffix != ".ipynb"]:
        raise ValueError(f"Not notebooks (.ipynb): {', '.join(not_notebooks)}. Pass .ipynb files or folders.")
    found = {path for path in paths if path.is_file()}
    for folder in (path for path in paths if path.is_dir()):
        found |= {notebook for notebook in folder.rglob("*.ipynb")
                  if not any(part.startswith(".") for part in notebook.relative_to(folder).parts[:-1])}
    if not found:
        raise ValueError(f"No notebooks (.ipynb) found in {', '.join(map(str, paths))}. Collect the "
                         "students' notebooks there first (see the instructors' guide).")
    return sorted(found)


def parse_submission(path: Path, chapters: Iterable[str]) -> Submission:
    """Chapter: the longest known chapter name in the file name (`alice-05_lora.ipynb`); student: the
    file name without it and its separators, or, if nothing is left, the folder's name."""
    stem = path.stem
    matches = [chapter for chapter in chapters if chapter.lower() in stem.lower()]
    if not matches:
        return Submission(path, stem, None)
    chapter = max(matches, key=len)
    start = stem.lower().index(chapter.lower())
    parts = [part.strip(SEPARATORS) for part in (stem[:start], stem[start + len(chapter):])]
    student = "-".join(part for part in parts if part) or path.resolve().parent.name
    return Submission(path, student, chapter)


def kernel_grades(chapter: str, namespace: dict) -> list[dict]:
    """Run in the student's kernel after the notebook: one outcome (as a dict) per exercise of `chapter`.

    A function exercise runs its hidden tests on `namespace[name]`, whether or not the notebook
    called `check`; a prediction or experiment takes the last outcome its check recorded.
    """
    outcomes = []
    for task in for_chapter(chapter):
        if task.kind == "function":
            answer = namespace.get(task.name)
            if not callable(answer):
                outcomes.append(Outcome(task.name, False, f"not defined: the notebook has no function "
                                                          f"named {task.name}"))
                continue
            # check records a failure in RESULTS before raising it, as it records a pass
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ExerciseFailed):
                check(task.name, answer)
            outcomes.append(RESULTS[-1])
        else:
            recorded = [outcome for outcome in RESULTS if outcome.name == task.name]
            call = CALLS[task.kind].format(name=task.name)
            outcomes.append(recorded[-1] if recorded else
                            Outcome(task.name, False, f"not run: the cell with {call} never ran"))
    return [asdict(outcome) for outcome in outcomes]


def grading_cell(chapter: str) -> str:
    """The source of the cell appended to a submission to grade it in its own kernel."""
    return (f"import json as _ftcourse_json\n"
            f"from ftcourse.exercises.grading import kernel_grades as _ftcourse_grades\n"
            f"print({MARKER!r} + _ftcourse_json.dumps(_ftcourse_grades({chapter!r}, globals())))")


def _kernel_manager():
    # A kernel of this very Python, whatever kernel the notebook names or kernelspecs the machine
    # has, so that it imports the ftcourse that grades (as nbval's --nbval-current-env does).
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def grade_notebook(submission: Submission, timeout: int = 600) -> Graded:
    """Execute one submission (`timeout` seconds per cell) and grade every exercise of its chapter."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if submission.chapter is None:
        known = ", ".join(sorted({task.chapter for task in EXERCISES.values()}))
        return Graded(submission, [Grade(submission.student, "", "", False,
                                         f"no chapter in the file name: name it like alice-05_lora.ipynb, "
                                         f"with one of {known}")])
    names = [task.name for task in for_chapter(submission.chapter)]
    ungraded = lambda why: [Grade(submission.student, submission.chapter, name, False, f"not graded: {why}")
                            for name in names]
    try:
        notebook = nbformat.read(submission.path, as_version=4)
    except (OSError, ValueError) as error:        # not JSON, or not a notebook
        return Graded(submission, ungraded(f"unreadable notebook ({error})"), f"unreadable: {error}")
    notebook.cells.append(nbformat.v4.new_code_cell(grading_cell(submission.chapter)))
    current = {"cell": 0}
    client = NotebookClient(notebook, km=_kernel_manager(), timeout=timeout, allow_errors=True,
                            resources={"metadata": {"path": str(submission.path.parent)}},
                            on_cell_start=lambda cell, cell_index: current.update(cell=cell_index + 1))
    try:
        # cleanup_kc: shut the kernel down afterwards, which nbclient skips for a kernel manager passed in
        client.execute(env={**os.environ, "FTCOURSE_SOLUTIONS": "hide"}, cleanup_kc=True)
    except CellTimeoutError:
        why = f"cell {current['cell']} ran longer than the {timeout} s timeout (--timeout)"
        return Graded(submission, ungraded(why), why)
    except DeadKernelError as error:
        why = f"the kernel died in cell {current['cell']} ({error})"
        return Graded(submission, ungraded(why), why)
    errors = [f"cell {index}: {output.ename}: {output.evalue}"[:300]   # a wrong answer is in its row
              for index, cell in enumerate(notebook.cells[:-1], 1) if cell.cell_type == "code"
              for output in cell.get("outputs", [])
              if output.output_type == "error" and output.ename != ExerciseFailed.__name__]
    printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs
                      if output.output_type == "stream")
    lines = [line[len(MARKER):] for line in printed.splitlines() if line.startswith(MARKER)]
    if not lines:
        final = [f"{output.ename}: {output.evalue}" for output in notebook.cells[-1].outputs
                 if output.output_type == "error"]
        why = f"the grading cell failed ({'; '.join(final) or 'it printed no grades'})"
        return Graded(submission, ungraded(why), why, errors)
    grades = [Grade(submission.student, submission.chapter, row["name"], row["passed"], row["message"])
              for row in json.loads(lines[-1])]
    return Graded(submission, grades, None, errors)


@dataclass(frozen=True)
class Report:
    """Every graded notebook of a lab, as CSV rows and a summary."""

    graded: list[Graded]

    @property
    def grades(self) -> list[Grade]:
        return [grade for notebook in self.graded for grade in notebook.grades]

    def summary(self) -> str:
        """Markdown: per student passed/total, per exercise pass rate, notebooks that failed to execute,
        and cells that raised an error (the notebook was graded anyway)."""
        per_student, per_exercise = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
        for grade in self.grades:
            if grade.exercise:
                for tally in (per_student[grade.student], per_exercise[(grade.chapter, grade.exercise)]):
                    tally[0] += grade.passed
                    tally[1] += 1
        lines = [f"# Grades: {len(self.graded)} notebook(s), {len(per_student)} student(s)", "",
                 "## Per student", "", "| student | passed | total |", "|---|---|---|"]
        lines += [f"| {student} | {passed} | {total} |"
                  for student, (passed, total) in sorted(per_student.items())]
        lines += ["", "## Per exercise", "", "| chapter | exercise | passed | pass rate |",
                  "|---|---|---|---|"]
        lines += [f"| {chapter} | {name} | {passed}/{total} | {passed / total:.0%} |"
                  for (chapter, name), (passed, total) in per_exercise.items()]
        problems = [f"- {notebook.submission.path}: {notebook.failure or notebook.grades[0].message}"
                    for notebook in self.graded if notebook.failure or notebook.submission.chapter is None]
        lines += ["", "## Notebooks that failed to execute or were not graded", ""] + (problems or ["none"])
        errors = [f"- {notebook.submission.path}, {error}" for notebook in self.graded
                  for error in notebook.cell_errors]
        lines += ["", "## Cells that raised an error (the rest of the notebook ran and was graded)", ""]
        return "\n".join(lines + (errors or ["none"])) + "\n"

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write grades.csv and summary.md into the folder `out` (created if missing); return their paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "grades.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(COLUMNS)
            writer.writerows(astuple(grade) for grade in self.grades)
        (out / "summary.md").write_text(self.summary(), encoding="utf-8")
        return out / "grades.csv", out / "summary.md"


def grade(paths: Sequence[str | Path], timeout: int = 600) -> Report:
    """Grade every notebook among `paths` (files or folders), one fresh kernel each."""
    chapters = {task.chapter for task in EXERCISES.values()}
    return Report([grade_notebook(parse_submission(path, chapters), timeout)
                   for path in find_notebooks(paths)])
