"""The book's structure: every page in the table of contents, every notebook runnable on Colab,
every chapter opening with objectives and time and closing with a summary, the instructors' timings
checked against a fresh run."""

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]


def test_every_page_is_in_the_toc_and_every_toc_entry_exists():
    listed = toc_files()
    assert len(listed) == len(set(listed)), "a page is listed twice in _toc.yml"
    pages = [str(path.relative_to(ROOT).with_suffix("")) for folder in ("notebooks", "book")
             for path in sorted((ROOT / folder).glob("*")) if path.suffix in (".ipynb", ".md")
             and not path.name.startswith("_")]
    assert sorted(pages) == sorted(listed)


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda path: path.stem)
def test_each_notebook_installs_the_package_on_colab_from_the_repository(notebook):
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    first_code = next(cell for cell in nbformat.read(notebook, 4).cells if cell.cell_type == "code")
    assert 'if "google.colab" in sys.modules' in first_code.source  # a no-op everywhere else
    assert f"git+{repository}" in first_code.source
    assert first_code.metadata.get("tags") == ["remove-cell"]      # hidden on the site


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda path: path.stem)
def test_ledger_records_are_cells_of_their_own_hidden_on_the_site(notebook):
    """A record's long f-string is for the ledger, not the reader: the site shows its printed line."""
    records = [cell for cell in nbformat.read(notebook, 4).cells
               if cell.cell_type == "code" and "chapter.record(" in cell.source]
    for cell in records:
        assert "remove-input" in cell.metadata.get("tags", []), cell.source[:80]
        assert cell.source.startswith("chapter.record(") and cell.source.count("chapter.record(") == 1
        assert len(cell.source.splitlines()) <= 6, f"keep a record cell short: {cell.source[:80]}"


def test_every_citation_is_in_the_bibliography():
    keys = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), re.M))
    texts = [path.read_text() for path in (ROOT / "book").glob("*.md")]
    texts += [cell.source for path in (ROOT / "notebooks").glob("*.ipynb")
              for cell in nbformat.read(path, 4).cells]
    cited = {key.strip() for text in texts for group in re.findall(r"\{cite(?::[pt])?\}`([^`]+)`", text)
             for key in group.split(",")}
    assert cited, "no citations found: the pattern is out of date"
    assert cited <= keys, f"cited but not in book/references.bib: {sorted(cited - keys)}"
    assert keys <= cited, f"in book/references.bib but never cited: {sorted(keys - cited)}"


def load_notebook_times():
    spec = importlib.util.spec_from_file_location("notebook_times", ROOT / "benchmarks" / "notebook_times.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_times_are_shown_beside_the_guides_with_both_machines_never_judged(capsys):
    times = load_notebook_times()
    saved = {"machine": {"model": "Slow CPU", "cores": 2, "avx512": []},
             "seconds": {"a.ipynb": 100.0, "b.ipynb": 4.0}}
    shown = times.side_by_side({"a.ipynb": 300.0, "c.ipynb": 1.0}, saved)   # 3x slower: not a failure
    assert "guide: Slow CPU, 2 cores, no AVX-512" in shown
    assert f"now:   {times.machine_line(times.cpu())}" in shown
    assert "a.ipynb" in shown and "300 s" in shown and "c.ipynb" in shown and "b.ipynb" in shown
    assert "AVX-512 (avx512f, avx512_bf16)" in times.machine_line(
        {"model": "Fast CPU", "cores": 2, "avx512": ["avx512_bf16", "avx512bw", "avx512f"]})


def test_the_guides_timings_table_is_the_saved_measurement_on_a_named_machine():
    times = load_notebook_times()
    saved = yaml.safe_load(times.SAVED.read_text())
    assert {Path(notebook).stem for notebook in saved["seconds"]} == {
        Path(page).name for page in toc_files() if (ROOT / f"{page}.ipynb").exists()}
    assert saved["machine"]["model"] and saved["machine"]["cores"] >= 1 and "avx512" in saved["machine"]
    assert times.TABLE.read_text().endswith(
        times.markdown_table(saved["seconds"], saved["machine"], saved.get("book_side_by_side_seconds")))


CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def bullets(markdown: str) -> list[str]:
    """The top-level bullets of a markdown text (continuation lines are indented)."""
    return [line for line in markdown.splitlines() if line.startswith("- ")]


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda path: path.stem)
def test_each_chapter_opens_with_objectives_prerequisites_and_time(notebook):
    title, opening = nbformat.read(notebook, 4).cells[:2]
    assert title.cell_type == "markdown" and title.source.startswith("# ")
    assert opening.cell_type == "markdown"
    assert opening.source.startswith("```{admonition} In this chapter\n:class: tip\n"), opening.source[:80]
    assert opening.source.endswith("\n```")
    assert opening.source.count("**You will be able to**") == opening.source.count("**Prerequisites:**") == 1
    objectives, rest = opening.source.split("**You will be able to**")[1].split("**Prerequisites:**")
    assert 3 <= len(bullets(objectives)) <= 5, bullets(objectives)
    prerequisites, time = rest.split("**Time:**")
    assert "{doc}`" in prerequisites                       # chapters as links (the quickstart's: setup)
    marker = load_notebook_times().TIME_LINE.search(time)
    assert marker and marker["stem"] == notebook.stem and time.startswith(f" {marker[0]}"), time
    assert re.search(r"about\s+\d+\s+min\s+with\s+reading[\w\s]*\(an\s+estimate\)", time), time


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda path: path.stem)
def test_each_chapter_closes_with_a_summary_and_further_reading_after_its_exercises(notebook):
    *body, summary, reading = nbformat.read(notebook, 4).cells
    assert summary.cell_type == reading.cell_type == "markdown"
    assert summary.source.startswith("```{admonition} Summary\n") and summary.source.endswith("\n```")
    assert 3 <= len(bullets(summary.source)) <= 6, bullets(summary.source)
    assert reading.source.startswith("## Further reading\n")
    assert "{cite:p}`" in reading.source and ("](https://" in reading.source or "{doc}`" in reading.source)
    assert not any(cell.source.startswith("## Summary") for cell in body), "one summary, at the end"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda path: path.stem)
def test_each_chapters_machine_time_is_the_saved_measurement_on_the_slower_machine(notebook):
    times = load_notebook_times()
    saved = json.loads(times.SAVED.read_text())
    seconds = saved["seconds"][f"notebooks/{notebook.name}"]
    stated = int(times.TIME_LINE.search(nbformat.read(notebook, 4).cells[1].source)["minutes"])
    factor = times.slower_machine_factor(saved)
    assert stated == times.machine_minutes(seconds, factor), "re-measured? notebook_times.py --save"


def test_machine_minutes_scale_to_the_slower_machine_and_round_up():
    times = load_notebook_times()
    assert times.machine_minutes(59 / 3.3, factor=3.3) == 1
    assert times.machine_minutes(61 / 3.3, factor=3.3) == 2
    assert times.machine_minutes(61, factor=1.0) == 2


def test_time_lines_are_rewritten_in_place_changing_only_the_minutes(tmp_path):
    times = load_notebook_times()
    chapter = tmp_path / "notebooks" / "05_lora.ipynb"
    chapter.parent.mkdir()
    original = (ROOT / "notebooks" / "05_lora.ipynb").read_bytes().replace(b"\n", b"\r\n")  # as on Windows
    chapter.write_bytes(original)
    measured = {"notebooks/05_lora.ipynb": 600.0, "book/choosing.ipynb": 1.0}   # a book page has no time line
    assert times.write_time_lines(measured, 1.0, root=tmp_path) == [chapter]
    text, old = original.decode(), times.TIME_LINE.search(original.decode())
    minutes = str(times.machine_minutes(600.0, 1.0))
    assert old["minutes"] != minutes
    expected = text[:old.start("minutes")] + minutes + text[old.end("minutes"):]
    assert chapter.read_bytes() == expected.encode()
    assert times.write_time_lines(measured, 1.0, root=tmp_path) == []     # already true: left alone


def test_chapters_without_their_own_time_line_are_refused_before_any_is_written(tmp_path):
    times = load_notebook_times()
    (tmp_path / "notebooks").mkdir()
    lora = (ROOT / "notebooks" / "05_lora.ipynb").read_bytes()
    for name, content in [("05_lora", lora), ("06_qlora", lora), ("99_new", b"{}")]:
        (tmp_path / "notebooks" / f"{name}.ipynb").write_bytes(content)
    measured = {f"notebooks/{name}.ipynb": 600.0 for name in ("05_lora", "06_qlora", "99_new")}
    with pytest.raises(ValueError, match=r"06_qlora.ipynb has time lines for \['05_lora'\].*"
                                         r"99_new.ipynb has time lines for \[\].*'In this chapter' box"):
        times.write_time_lines(measured, 1.0, root=tmp_path)
    assert (tmp_path / "notebooks" / "05_lora.ipynb").read_bytes() == lora


def test_the_three_hour_lab_plan_takes_its_machine_times_from_the_measured_run_and_adds_up():
    times = load_notebook_times()
    plan = times.LAB_PLAN.read_text()
    saved = json.loads(times.SAVED.read_text())
    seconds, factor = saved["seconds"], times.slower_machine_factor(saved)
    rows = list(times.LAB_ROW.finditer(plan))
    lab = {"00_quickstart", "02_sft_instruction_tuning", "05_lora", "08_evaluation"}
    assert {row["stem"] for row in rows} >= lab, "the lab covers quickstart, SFT, LoRA and evaluation"
    for row in rows:
        measured = seconds[f"notebooks/{row['stem']}.ipynb"]
        assert int(row["minutes"]) == times.machine_minutes(measured, factor), (
            f"{row['stem']}: re-measured? run benchmarks/notebook_times.py --save")
    table = plan[plan.index("**Three hours**"):plan.index("**One day**")]
    sessions = [line.split("|")[1:5] for line in table.splitlines() if re.match(r"\| \d:\d\d \|", line)]
    starts = [int(start.split(":")[0]) * 60 + int(start.split(":")[1]) for start, *_ in sessions]
    lengths = [int(human.split()[0]) for *_, human in sessions]
    assert [start + length for start, length in zip(starts, lengths)] == starts[1:] + [180], (
        "each session starts when the one before ends, and the last ends at 3:00")


def test_re_measuring_rewrites_the_lab_plans_minutes_and_nothing_else(tmp_path):
    times = load_notebook_times()
    plan = tmp_path / "instructors.md"
    plan.write_text(times.LAB_PLAN.read_text())
    seconds = json.loads(times.SAVED.read_text())["seconds"]
    slower = {name: 10 * value for name, value in seconds.items()}
    assert times.write_lab_plan(slower, 1.0, plan)
    for row in times.LAB_ROW.finditer(plan.read_text()):
        assert int(row["minutes"]) == times.machine_minutes(slower[f"notebooks/{row['stem']}.ipynb"], 1.0)
    assert times.LAB_ROW.sub("", plan.read_text()) == times.LAB_ROW.sub("", times.LAB_PLAN.read_text())
    with pytest.raises(ValueError, match="lab plan names .*05_lora"):
        times.write_lab_plan({k: v for k, v in seconds.items() if "05_lora" not in k}, 1.0, plan)
