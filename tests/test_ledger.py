import json

import pandas as pd
import pytest

from ftcourse import ledger


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCOURSE_RESULTS", str(tmp_path))
    for variable in ("FTCOURSE_MODEL", "FTCOURSE_DATA_DIR", "FTCOURSE_DTYPE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def record_all(chapter: ledger.Chapter, verdict: str = "holds partly") -> None:
    for claim_id in ledger.CLAIMS:
        chapter.record(claim_id, measured=f"{chapter.profile.name} number for {claim_id}", verdict=verdict,
                       at_scale="7B: 1 GB")


def test_recorded_results_make_the_table(results):
    record_all(ledger.Chapter("any", "tiny"))
    table = ledger.ledger_table("tiny")
    assert len(table) == len(ledger.CLAIMS)
    row = table.iloc[0]
    first = next(iter(ledger.CLAIMS.values()))
    assert row["the article says"] == first.text and row["checked in"] == first.chapter
    measured = next(column for column in table.columns if column.startswith("measured: tiny (embedded"))
    assert row[measured].startswith("tiny number for ") and row["verdict: tiny"] == "holds partly"
    assert row["computed at real scale"] == "7B: 1 GB"
    assert json.loads((results / "tiny" / "peft-memory.json").read_text())["chapter"] == "04_full_vs_peft"


def test_a_second_profile_gets_columns_beside_the_first(results):
    record_all(ledger.Chapter("any", "tiny"))
    gpu = ledger.Chapter("04_full_vs_peft", "gpu")
    gpu.record("peft-quality", measured="LoRA 97%", verdict="holds")
    table = ledger.ledger_table("tiny").set_index("the article says")
    quality = table.loc[ledger.CLAIMS["peft-quality"].text]
    assert (quality["verdict: tiny"], quality["verdict: gpu"]) == ("holds partly", "holds")
    gpu_measured = next(column for column in table.columns if column.startswith("measured: gpu ("))
    assert "SmolLM2" in gpu_measured and quality[gpu_measured] == "LoRA 97%"
    assert table.loc[ledger.CLAIMS["peft-speed"].text, "verdict: gpu"] == "not run"
    # Seen from the GPU profile, its own results must be complete.
    with pytest.raises(FileNotFoundError, match="run the chapter notebook"):
        ledger.ledger_table("gpu")


def test_a_missing_result_names_the_chapter_to_run(results):
    chapter = ledger.Chapter("any", "tiny")
    for claim_id in ledger.CLAIMS:
        if claim_id != "ffn-two-thirds":
            chapter.record(claim_id, measured="x", verdict="holds")
    expected = r"claim\(s\) \['ffn-two-thirds'\].*'01_transformer_internals'"
    with pytest.raises(FileNotFoundError, match=expected):
        ledger.ledger_table("tiny")


def test_bad_records_are_refused(results):
    chapter = ledger.Chapter("any", "tiny")
    with pytest.raises(ValueError, match="Unknown claim 'moon-landing'"):
        chapter.record("moon-landing", measured="x", verdict="holds")
    with pytest.raises(ValueError, match="Verdict must be one of"):
        chapter.record("peft-memory", measured="x", verdict="probably")


def test_a_claim_is_asserted_where_calibrated_and_recorded_elsewhere(results, capsys, monkeypatch):
    tiny = ledger.Chapter("05_lora", "tiny")
    assert tiny.calibrated and tiny.expect(2 > 1, "two beats one", measured="2 vs 1") is True
    with pytest.raises(AssertionError, match=r"no longer holds on the tiny profile: one beats two"):
        tiny.expect(1 > 2, "one beats two", measured="1 vs 2")
    gpu = ledger.Chapter("05_lora", "gpu")
    assert not gpu.calibrated and gpu.expect(1 > 2, "one beats two", measured="1 vs 2") is False
    assert "DOES NOT HOLD on gpu: one beats two (measured: 1 vs 2)" in capsys.readouterr().out
    # The tiny profile pointed at another model is not the one its thresholds were set on.
    monkeypatch.setenv("FTCOURSE_MODEL", str(results))
    assert not ledger.Chapter("05_lora", "tiny", root=results / "elsewhere").calibrated
    monkeypatch.delenv("FTCOURSE_MODEL")
    table = ledger.checks_table("tiny")
    assert table.loc[("05_lora", "one beats two"), "tiny"] == "does not hold"
    assert table.loc[("05_lora", "one beats two"), "gpu"] == "does not hold"
    assert table.loc[("05_lora", "two beats one"), "gpu"] == "not run"
    measured = ledger.checks_table("tiny", measured=True)
    assert measured.loc[("05_lora", "one beats two"), "measured: gpu"] == "1 vs 2"


def test_verdicts_follow_the_parts_of_a_claim():
    assert ledger.verdict_of(True, True) == "holds"
    assert ledger.verdict_of(True, False) == "holds partly"
    assert ledger.verdict_of(False, False) == "does not hold here"


def test_tables_round_trip_per_profile(results):
    path = ledger.Chapter("04_full_vs_peft", "gpu").save_table(
        pd.DataFrame({"score": [0.5]}, index=pd.Index(["LoRA"], name="method")), "methods")
    assert path == results / "gpu" / "methods.csv"
    assert ledger.read_table("methods", "gpu").to_dict("records") == [{"method": "LoRA", "score": 0.5}]
    with pytest.raises(FileNotFoundError, match=r"tiny/methods.csv is missing"):
        ledger.read_table("methods", "tiny")


def test_a_chapter_run_again_states_its_claims_afresh(results):
    ledger.Chapter("05_lora", "tiny").expect(True, "an old claim")
    ledger.Chapter("07_soft_prompts", "tiny").expect(True, "another chapter's claim")
    ledger.Chapter("05_lora", "tiny").expect(True, "the claim as reworded")
    claims = set(ledger.checks_table("tiny").index)
    assert claims == {("05_lora", "the claim as reworded"), ("07_soft_prompts", "another chapter's claim")}


def _state_claims(root: str, chapter: str, count: int, together) -> None:
    """One chapter's run in a process of its own: `count` claims, each written as soon as stated,
    starting when every chapter is ready (`together`, a barrier), so that their writes overlap."""
    claims = ledger.Chapter(chapter, "tiny", root=root)
    together.wait()
    for index in range(count):
        claims.expect(True, f"claim {index}")


def test_chapters_running_at_once_keep_every_claim(results):
    # `make test` runs chapters side by side, and each rewrites the profile's checks.json for every
    # claim: without the lock, one process's rewrite drops what another added in between.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    chapters = [f"{index:02d}_chapter" for index in range(4)]
    together = context.Barrier(len(chapters))
    workers = [context.Process(target=_state_claims, args=(str(results), chapter, 100, together))
               for chapter in chapters]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    claims = set(ledger.checks_table("tiny").index)
    assert claims == {(chapter, f"claim {index}") for chapter in chapters for index in range(100)}
