"""The setup page's commands without `make` (Windows PowerShell) against the Makefile they replace.

book/setup.md has, under the heading "The Makefile's targets in PowerShell", one fenced powershell
block: first the Makefile's exported variables, then one section per target, each opened by a
comment line `# make TARGET`. These tests check that every target has its section, that each
section runs the same tools (Python modules, console scripts, scripts) as the target's recipe, that
the variables are the Makefile's, and that each documented `python -m MODULE` runs here.
"""

import re
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "setup.md"
HEADING = "### The Makefile's targets in PowerShell"

# A Python launcher at the start of a word (`py`, `python3`) or the venv's (.venv/bin, .venv\Scripts).
PYTHON = r"(?:(?<![\w.\\/-])(?:py|python3?)|\.venv[\\/](?:bin|Scripts)[\\/]python)(?:\.exe)?"
MODULE = re.compile(PYTHON + r"\s+-m\s+([\w.]+)")
SCRIPT = re.compile(PYTHON + r"\s+([\w./\\-]+\.py)\b")
CONSOLE = re.compile(r"\.venv[\\/](?:bin|Scripts)[\\/](?!python\b)([\w-]+)")
BASH = re.compile(r"(?<![\w-])bash\s+([\w./\\-]+\.sh)\b")

# Each module or console script the page runs, with a harmless argument and what it prints then.
HARMLESS = {
    "venv": ("--help", re.compile(r"usage: venv .*ENV_DIR", re.S)),
    "pip": ("--version", re.compile(rf"^pip {re.escape(version('pip'))} ")),
    "ruff": ("--version", re.compile(rf"^ruff {re.escape(version('ruff'))}$", re.M)),
    "nbstripout": ("--version", re.compile(rf"^{re.escape(version('nbstripout'))}$", re.M)),
    "pytest": ("--version", re.compile(rf"^pytest {re.escape(version('pytest'))}$", re.M)),
    "http.server": ("--help", re.compile(r"^usage: .*--directory", re.S)),
    "ftcourse": ("--help", re.compile(r"^usage: ftcourse .*\bdoctor\b", re.S)),
    "jupyter": ("--version", re.compile(rf"^jupyter_core\s*: {re.escape(version('jupyter_core'))}$", re.M)),
    "jupyter-book": ("--version",
                     re.compile(rf"^Jupyter Book\s*: {re.escape(version('jupyter-book'))}$", re.M)),
}


def tools(command_lines: str) -> set[str]:
    """The tools some shell lines run: `python -m` modules, the venv's console scripts, and scripts
    run by Python or bash (with `/` separators), so a Makefile recipe and PowerShell compare."""
    found: set[str] = set()
    for line in command_lines.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)  # comments name tools without running them
        found.update(MODULE.findall(line) + CONSOLE.findall(line))
        found.update(path.replace("\\", "/") for path in SCRIPT.findall(line) + BASH.findall(line))
    return found


def makefile() -> tuple[dict[str, tuple[list[str], str]], dict[str, tuple[str, bool]]]:
    """The Makefile's rules {target: (prerequisites, recipe)} with its own variables expanded, and
    its exported variables {name: (value, set only when unset)}."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.M))

    def expand(words: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: expand(variables[m[1]]) if m[1] in variables else m[0], words)

    exports = {name: (value.strip(), operator == "?=")
               for name, operator, value in re.findall(r"^export (\w+)\s*(\?=|:=|=)\s*(.*)$", text, re.M)}
    rules: dict[str, tuple[list[str], str]] = {}
    for match in re.finditer(r"^([^\s#:=][^:=\n]*):(?!=)([^\n]*)\n((?:\t[^\n]*\n?)*)", text, re.M):
        target = expand(match[1].strip())
        recipe = "\n".join(expand(line.strip()) for line in match[3].splitlines())
        rules[target] = (expand(match[2]).split(), recipe)
    return rules, exports


def target_tools(rules: dict[str, tuple[list[str], str]], target: str) -> set[str]:
    """What `make TARGET` runs: its recipe's tools, those of each `$(MAKE) OTHER` in it, and those of
    its prerequisites when it has no recipe of its own (`setup: $(STAMP)`)."""
    prerequisites, recipe = rules[target]
    found = tools(recipe)
    for other in re.findall(r"\$\(MAKE\)\s+([\w-]+)", recipe):
        found |= target_tools(rules, other)
    if not recipe.strip():
        for other in (p for p in prerequisites if p in rules):
            found |= target_tools(rules, other)
    return found


def powershell_block(page: str) -> str:
    """The fenced powershell block under HEADING."""
    match = re.search(re.escape(HEADING) + r"\n.*?```powershell\n(.*?)```", page, re.S)
    assert match, f"{PAGE.name} has no ```powershell block under {HEADING!r}: restore the heading and block"
    return match[1]


def sections(block: str) -> tuple[str, dict[str, str]]:
    """The block split at its `# make TARGET` lines: (the lines before the first, {target: lines})."""
    parts = re.split(r"^# make ([\w-]+)\b.*$", block, flags=re.M)
    return parts[0], dict(zip(parts[1::2], parts[2::2], strict=True))


def page_env(lines: str) -> dict[str, tuple[str, bool]]:
    """`$env:NAME = "value"` lines: {name: (value, set only when unset, as `if (-not $env:NAME)`)}."""
    return {name: (value, bool(condition)) for condition, name, value in
            re.findall(r'^(if \(-not \$env:\w+\) \{ )?\$env:(\w+) = "([^"]*)"', lines, re.M)}


RULES, EXPORTS = makefile()
PREAMBLE, SECTIONS = sections(powershell_block(PAGE.read_text()))
PHONY = RULES[".PHONY"][0]


def test_every_make_target_has_a_powershell_section():
    assert sorted(SECTIONS) == sorted(PHONY), "book/setup.md's sections differ from the Makefile's .PHONY"
    # each section runs something: a comment alone is no equivalent
    empty = [t for t, lines in SECTIONS.items() if not re.sub(r"(^|\s)#.*", "", lines).strip()]
    assert not empty, f"sections with no command: {empty}"


@pytest.mark.parametrize("target", PHONY)
def test_section_runs_the_same_tools_as_the_make_target(target):
    ours, theirs = tools(SECTIONS[target]), target_tools(RULES, target)
    assert ours == theirs, f"make {target} runs {sorted(theirs)}, book/setup.md's section {sorted(ours)}"


def test_tools_sees_through_launchers_and_separators():
    """A sanity check of the comparison itself, since a parser that finds nothing passes anything."""
    assert tools(".venv\\Scripts\\python -m pytest tests -m equivalence") == {"pytest"}
    assert tools("python3 -m venv .venv\n.venv/bin/ruff check x  # .venv/bin/nbstripout") == {"venv", "ruff"}
    assert tools(".venv\\Scripts\\python benchmarks\\run_all.py") == {"benchmarks/run_all.py"}
    assert tools("PATH=.venv/bin:$$PATH bash tests/run_hub.sh _build/hub") == {"tests/run_hub.sh"}
    assert target_tools(RULES, "test") >= {"pytest", "jupyter-book", "tests/run_hub.sh"}


def test_environment_is_the_makefiles():
    assert page_env(PREAMBLE) == EXPORTS
    assert EXPORTS["HF_HUB_OFFLINE"] == ("1", False)       # the parser reads the Makefile at all


def test_every_script_named_exists():
    scripts = {tool for lines in SECTIONS.values() for tool in tools(lines) if "/" in tool}
    assert scripts, "no script found: the parser is out of date"
    assert not [s for s in scripts if not (ROOT / s).is_file()], "book/setup.md names a missing script"


def documented_tools() -> dict[str, list[str]]:
    """{tool: the command lines that run it} for every module and console script in the page's
    powershell blocks."""
    found: dict[str, list[str]] = {}
    for block in re.findall(r"```powershell\n(.*?)```", PAGE.read_text(), re.S):
        for line in block.splitlines():
            for tool in (t for t in tools(line) if not t.endswith((".py", ".sh"))):
                found.setdefault(tool, []).append(line.strip())
    return found


DOCUMENTED = documented_tools()


@pytest.mark.parametrize("tool", sorted(DOCUMENTED))
def test_documented_tool_runs_here(tool):
    """Each tool once, with a harmless argument, as the page runs it: `python -m` through this
    interpreter, a console script from its scripts folder (the page's .venv\\Scripts)."""
    assert tool in HARMLESS, f"{tool} ({DOCUMENTED[tool][0]!r}) has no harmless argument: add one to HARMLESS"
    argument, expected = HARMLESS[tool]
    if any(tool in MODULE.findall(line) for line in DOCUMENTED[tool]):
        command = [sys.executable, "-m", tool, argument]
    else:
        command = [str(Path(sysconfig.get_path("scripts")) / tool), argument]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}: {done.stderr[-500:]}"
    assert expected.search(done.stdout), f"{' '.join(command)} printed {done.stdout[:300]!r}"
    if argument == "--help":   # the options the page passes exist (e.g. http.server's --bind)
        options = {o for line in DOCUMENTED[tool] for o in re.findall(r"(?<=\s)--[\w-]+", line)}
        assert not [o for o in options if o not in done.stdout], f"the page passes {tool} unknown options"
