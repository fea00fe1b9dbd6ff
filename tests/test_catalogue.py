"""Every bad input of the catalogue (tests/catalogue.py) gets its clear, specific message, raised
by ftcourse itself rather than deep inside a library; the book's table is generated from them."""

from pathlib import Path

import pytest
from catalogue import CASES, TABLE, markdown_table, observe

PACKAGE = Path(__file__).resolve().parents[1] / "ftcourse"


def test_the_catalogue_covers_at_least_thirty_bad_inputs_in_every_area():
    areas = {case.area for case in CASES.values()}
    assert len(CASES) >= 30
    assert areas >= {"data", "format", "config", "model", "adapter", "checkpoint", "safety", "cli"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_a_specific_message(name, tmp_path):
    case = CASES[name]
    observed = observe(case, tmp_path)
    missing = [fragment for fragment in case.says if fragment not in observed.message]
    assert not missing, f"{name}: the message lacks {missing}:\n{observed.message}"
    if observed.origin is not None:   # raised by our own check, not by a library tripping over it
        assert Path(observed.origin).is_relative_to(PACKAGE), f"{name} was raised in {observed.origin}"


def test_the_books_table_is_generated_from_the_catalogue():
    # Every row, in order, as the generator writes it. A message may differ in wording that comes
    # from the Python or library version (argparse quotes choices only before 3.12.8), so the
    # message cells must hold what each entry's test requires rather than match byte for byte.
    fresh = "regenerate it with `python tests/catalogue.py` (make catalogue) and commit it"
    rows = [line.split(" | ") for line in TABLE.read_text().splitlines()[2:]]
    expected = [line.split(" | ") for line in markdown_table().splitlines()[2:]]
    assert [row[:4] for row in rows] == [row[:4] for row in expected], f"book/_catalogue.md is stale: {fresh}"
    for row, case in zip(rows, CASES.values()):
        message = row[4].replace("<br>", "\n").replace("\\|", "|")
        missing = [fragment for fragment in case.says if fragment not in message]
        assert not missing, f"row {row[0]} of book/_catalogue.md lacks {missing}: {fresh}"
