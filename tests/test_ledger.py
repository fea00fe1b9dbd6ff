import json

import pytest

from ftcourse import ledger


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCOURSE_RESULTS", str(tmp_path))
    return tmp_path


def test_recorded_results_make_the_table(results):
    for claim_id in ledger.CLAIMS:
        ledger.record(claim_id, measured=f"number for {claim_id}", verdict="holds partly",
                      at_scale="7B: 1 GB")
    table = ledger.ledger_table()
    assert len(table) == len(ledger.CLAIMS)
    row = table.iloc[0]
    first = next(iter(ledger.CLAIMS.values()))
    assert row["the article says"] == first.text and row["checked in"] == first.chapter
    assert row["measured (tiny model)"].startswith("number for ") and row["verdict"] == "holds partly"
    assert json.loads((results / "peft-memory.json").read_text())["chapter"] == "04_full_vs_peft"


def test_a_missing_result_names_the_chapter_to_run(results):
    for claim_id in ledger.CLAIMS:
        if claim_id != "ffn-two-thirds":
            ledger.record(claim_id, measured="x", verdict="holds")
    expected = r"claim\(s\) \['ffn-two-thirds'\].*'01_transformer_internals'"
    with pytest.raises(FileNotFoundError, match=expected):
        ledger.ledger_table()


def test_bad_records_are_refused(results):
    with pytest.raises(ValueError, match="Unknown claim 'moon-landing'"):
        ledger.record("moon-landing", measured="x", verdict="holds")
    with pytest.raises(ValueError, match="Verdict must be one of"):
        ledger.record("peft-memory", measured="x", verdict="probably")
