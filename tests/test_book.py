"""The book's structure: every page in the table of contents, every notebook runnable on Colab,
the instructors' timings checked against a fresh run."""

import importlib.util
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
        tags = cell.metadata.get("tags", [])
        assert "remove-input" in tags or "remove-cell" in tags, cell.source[:80]
        if "remove-input" in tags:
            assert cell.source.startswith("chapter.record(") and cell.source.count("chapter.record(") == 1


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
    assert times.TABLE.read_text().endswith(times.markdown_table(saved["seconds"], saved["machine"]))
