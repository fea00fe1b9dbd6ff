"""Two exercises that are not "write a function": predict-then-run, and a small open experiment.

Predict-then-run: the learner writes `prediction = ...` before running a cheap experiment, then
`check_prediction(name, prediction, measured)` prints the prediction beside the measurement and
says whether it was right. Committing to a prediction is the exercise, so any prediction of the
registered form passes (`Number`: within a relative tolerance is "right"; `Choice`: the option
the measurement picks is). Open experiment: the learner answers a stated question with a dict
`finding`; `check_finding(name, finding)` checks its form (named `Field`s with types and ranges,
plus the registration's consistency checks) and lists every problem at once.
Both register in `core.EXERCISES` and record each outcome in `core.RESULTS` for `ftcourse grade`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ftcourse.exercises.core import ExerciseFailed, get, record, register


def _is_number(value: object) -> bool:
    # numbers.Real covers Python and NumPy floats and ints; bool is an int, but never a measurement.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    return f" >= {low:g}" if low is not None else f" <= {high:g}" if high is not None else ""


@dataclass(frozen=True)
class Number:
    """A numeric prediction, optionally within [low, high]; right when within `rel` of the measurement."""

    rel: float
    low: float | None = None
    high: float | None = None
    unit: str = ""

    def describe(self) -> str:
        """The form, for messages: "a number in [0, 100] (%)"."""
        return f"a number{_range_text(self.low, self.high)}" + (f" ({self.unit})" if self.unit else "")

    def valid(self, prediction: object) -> bool:
        """Whether `prediction` has this form (a number in range), right or not."""
        return (_is_number(prediction) and (self.low is None or prediction >= self.low)
                and (self.high is None or prediction <= self.high))

    def judge(self, prediction: float, measured: Any) -> str:
        """The prediction beside the measurement, and whether it was right or by how much it missed."""
        if not _is_number(measured):
            raise ValueError(f"The notebook's measurement must be a number, got {measured!r}; "
                             "fix the experiment cell.")
        unit = self.unit if self.unit in ("", "%") else f" {self.unit}"
        miss = abs(prediction - measured) / abs(measured) if measured else abs(prediction - measured)
        miss_text = f"{miss:.0%}" if measured else f"{miss:g}{unit}"
        verdict = (f"right (off by {miss_text}, within the {self.rel:.0%} allowed)" if miss <= self.rel
                   else f"missed by {miss_text} (within {self.rel:.0%} counts as right)")
        return f"your prediction {prediction:g}{unit}, measured {measured:.4g}{unit}: {verdict}."


@dataclass(frozen=True)
class Choice:
    """A prediction that is one of `options`; right when it is the option `right(measured)` returns."""

    options: tuple[str, ...]
    right: Callable[[Any], str]

    def describe(self) -> str:
        """The form, for messages: "one of 'grows', 'shrinks'"."""
        return "one of " + ", ".join(repr(option) for option in self.options)

    def valid(self, prediction: object) -> bool:
        """Whether `prediction` is one of the options, right or not."""
        return isinstance(prediction, str) and prediction in self.options

    def judge(self, prediction: str, measured: Any) -> str:
        """The prediction beside the measurement, and the option the measurement picks if it differs."""
        answer = self.right(measured)
        assert answer in self.options, f"the registration's right() returned {answer!r}, not an option"
        verdict = "right" if prediction == answer else f"missed: the measurement says {answer!r}"
        return f"your prediction {prediction!r}, measured {measured}: {verdict}."


@dataclass(frozen=True)
class Prediction:
    """A predict-then-run exercise: the question asked and the form a valid prediction takes."""

    name: str
    chapter: str
    task: str
    form: Number | Choice
    kind: ClassVar[str] = "prediction"


def predict(name: str, chapter: str, question: str, form: Number | Choice) -> Prediction:
    """Register a predict-then-run exercise; its notebook cell calls `check_prediction(name, ...)`."""
    return register(Prediction(name, chapter, question, form))


def check_prediction(name: str, prediction: object, measured: Any) -> bool:
    """Print the learner's prediction beside the measurement: True once a prediction of the right form
    was made (right or not: the message says which), False while `prediction` is None."""
    task = get(name, "prediction")
    if prediction is None:
        message = (f"{name}: not attempted: write your prediction first ({task.form.describe()}).\n"
                   f"  {task.task}")
        print(record(name, False, message).message)
        return False
    if not task.form.valid(prediction):
        message = (f"{name}: your prediction must be {task.form.describe()}, got {prediction!r} "
                   f"({type(prediction).__name__}). Fix `prediction = ...` and run the cell again.")
        record(name, False, message)
        raise ExerciseFailed(message)
    print(record(name, True, f"{name}: {task.form.judge(prediction, measured)}").message)
    return True


@dataclass(frozen=True)
class Field:
    """One field of an experiment's answer: int, float, str, or a list of `item` (int or float).

    Numbers (or a list's items) must lie in [low, high]; a str or list has at least `min_len`
    characters or items.
    """

    type: type
    low: float | None = None
    high: float | None = None
    min_len: int = 0
    item: type | None = None

    def __post_init__(self) -> None:
        if self.type not in (int, float, str, list) or (self.type is list) != (self.item in (int, float)):
            raise ValueError(f"Field(type={self.type!r}, item={self.item!r}): type must be int, float or str "
                             "with no item, or list with item=int or item=float.")

    def describe(self) -> str:
        """The form, for messages: "a list of at least 2 int >= 1"."""
        bounds = _range_text(self.low, self.high)
        if self.type is list:
            return f"a list of at least {self.min_len} {self.item.__name__}{bounds}"
        if self.type is str:
            return f"a str of at least {self.min_len} characters"
        return f"{'an' if self.type is int else 'a'} {self.type.__name__}{bounds}"

    def problems(self, key: str, value: object) -> list[str]:
        """What is wrong with `value` as this field (empty if nothing)."""
        if self.type is list:
            if not isinstance(value, (list, tuple)):
                return [f"{key} must be {self.describe()}, got {type(value).__name__}"]
            wrong = [item for item in value if self._number_problem(self.item, item)]
            short = len(value) < self.min_len
            return [f"{key} must be {self.describe()}, got {value!r}"] if wrong or short else []
        if self.type is str:
            ok = isinstance(value, str) and len(value.strip()) >= self.min_len
            return [] if ok else [f"{key} must be {self.describe()}, got {value!r}"]
        wrong = self._number_problem(self.type, value)
        return [f"{key} must be {self.describe()}, got {value!r}"] if wrong else []

    def _number_problem(self, kind: type, value: object) -> bool:
        # An int field takes whole numbers only; a float field takes ints too (3 is a fine 3.0).
        if not _is_number(value) or (kind is int and not isinstance(value, numbers.Integral)):
            return True
        return (self.low is not None and value < self.low) or (self.high is not None and value > self.high)


@dataclass(frozen=True)
class Experiment:
    """An open experiment: its question, the fields of the answer, and consistency checks.

    Each check takes the finding (only once every field has the right form) and returns what is
    inconsistent, or None.
    """

    name: str
    chapter: str
    task: str
    fields: Mapping[str, Field]
    checks: tuple[Callable[[dict], str | None], ...] = field(default=())
    kind: ClassVar[str] = "experiment"

    def template(self) -> str:
        """The answer's form as a dict literal, for `finding = ...` and for messages."""
        return "{" + ", ".join(f'"{key}": {spec.describe()}' for key, spec in self.fields.items()) + "}"


def one_value_per(setting: str, measured: Sequence[str], each: str,
                  many: str) -> Callable[[dict], str | None]:
    """The consistency check most experiments need: each list named in `measured` has one value per
    entry of the list `setting`, in its order, and no setting repeats. `each` and `many` name a
    setting in words ("rank", "ranks") for the message."""
    def check(finding: dict) -> str | None:
        settings = finding[setting]
        if wrong := [f"{key} has {len(finding[key])} values" for key in measured
                     if len(finding[key]) != len(settings)]:
            where = "each list" if len(measured) > 1 else measured[0]
            return (f"{' and '.join(wrong)} for {len(settings)} {many}: give one value per {each} in "
                    f"{where}, in the same order")
        if len(set(settings)) != len(settings):
            article = "an" if each[0] in "aeiou" else "a"
            return f"{setting} {settings} repeat {article} {each}: try different ones"
        return None
    return check


def experiment(name: str, chapter: str, question: str, fields: Mapping[str, Field],
               checks: tuple[Callable[[dict], str | None], ...] = ()) -> Experiment:
    """Register an open experiment; its notebook cell calls `check_finding(name, finding)`."""
    return register(Experiment(name, chapter, question, dict(fields), tuple(checks)))


def finding_problems(task: Experiment, finding: object) -> list[str]:
    """Every problem with the form of `finding` for `task`: missing, extra or malformed fields, then
    (when the fields are right) the registration's consistency checks."""
    if not isinstance(finding, Mapping):
        return [f"finding must be a dict {task.template()}, got {type(finding).__name__}"]
    problems = [f"missing field {key!r}: {spec.describe()}"
                for key, spec in task.fields.items() if key not in finding]
    problems += [f"extra field {key!r}: the answer has only {', '.join(task.fields)}"
                 for key in finding if key not in task.fields]
    for key, spec in task.fields.items():
        if key in finding:
            problems += spec.problems(key, finding[key])
    if not problems:
        problems = [problem for check in task.checks if (problem := check(dict(finding)))]
    return problems


def check_finding(name: str, finding: object) -> bool:
    """Check the form of the learner's answer to the open experiment `name`: True when right, False
    while `finding` is None; otherwise `ExerciseFailed` listing every problem and the form wanted."""
    task = get(name, "experiment")
    if finding is None:
        message = f"{name}: not attempted: fill in `finding = {task.template()}`.\n  Question: {task.task}"
        print(record(name, False, message).message)
        return False
    if problems := finding_problems(task, finding):
        message = (f"{name}: {len(problems)} problem(s) with your finding:\n"
                   + "\n".join(f"  - {problem}" for problem in problems)
                   + f"\nFix `finding = ...` (form: {task.template()}) and run the cell again.")
        record(name, False, message)
        raise ExerciseFailed(message)
    message = (f"{name}: your finding has the required form. The conclusion is yours to defend: "
               "compare it with a neighbour's.")
    print(record(name, True, message).message)
    return True
