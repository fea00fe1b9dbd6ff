"""Claims and the ledger: what each chapter claims, checked on the profile it runs on.

A chapter makes one `Chapter(name, profile)` and states every measured claim through it:
`chapter.expect(holds, "LoRA reaches 90-99% of full fine-tuning", measured="94%")`. On the profile
the numbers were calibrated on (tiny, with the embedded model and the synthetic world) a claim
that fails stops the notebook, so nbval fails when a claim stops holding. On any other profile
(a real model on a GPU, or the GPU path's CPU fixture) the claim is shown with its verdict and
recorded, since a 360M-parameter model owes nothing to thresholds set on a 0.9M one. Equality
with a library is no claim: chapters assert it on every profile.

`chapter.record(claim_id, ...)` saves the chapter's finding about one of the article's claims.
Everything lands in `<results>/<profile>/` (`$FTCOURSE_RESULTS`, default `results/` beside the
notebooks); the ledger page reads it back, one column per profile that has run.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftcourse.profiles import PROFILES, Profile, get_profile

VERDICTS = ("holds", "holds partly", "does not hold here")
CALIBRATED = PROFILES["tiny"]      # the profile every chapter's thresholds were measured on


@dataclass(frozen=True)
class Claim:
    """One claim of the article, in its words, and the chapter whose experiment checks it."""

    text: str
    chapter: str


CLAIMS: dict[str, Claim] = {
    "ffn-two-thirds": Claim("The FFN holds roughly two-thirds of a transformer's parameters",
                            "01_transformer_internals"),
    "sft-rlhf": Claim("Typical pipeline: base model, then SFT, then RLHF, where the model learns to prefer "
                      "the outputs humans rank higher", "03b_rl_from_feedback"),
    "instruction-lora-independent": Claim("Instruction tuning (the data) and LoRA (the method) are "
                                          "independent choices", "02_sft_instruction_tuning"),
    "full-ft-7b-memory": Claim("Full fine-tuning of a 7B model needs 100+ GB of VRAM", "04_full_vs_peft"),
    "peft-trainable-share": Claim("PEFT trains ~0.1-2% of the parameters", "04_full_vs_peft"),
    "peft-memory": Claim("PEFT needs 10-100x less memory", "04_full_vs_peft"),
    "peft-quality": Claim("PEFT reaches 90-99% of full fine-tuning quality", "04_full_vs_peft"),
    "peft-speed": Claim("PEFT trains faster", "04_full_vs_peft"),
    "peft-forgetting": Claim("PEFT has a lower risk of catastrophic forgetting", "04_full_vs_peft"),
    "qlora-matches-lora": Claim("QLoRA (LoRA on a 4-bit base) matches LoRA's quality", "06_qlora"),
    "qlora-65b": Claim("QLoRA fine-tunes a 65B model on a single GPU", "04_full_vs_peft"),
    "lora-recipe": Claim("Start with r=8, lora_alpha=16 and 3 epochs", "05_lora"),
    "lora-adapters-swap": Claim("LoRA adapters are MBs, not GBs, and swap on a single base model",
                                 "05b_lora_in_practice"),
    "soft-prompt-size": Claim("Soft prompts train only thousands of parameters (vs millions for LoRA), "
                              "in KB-sized files", "07_soft_prompts"),
    "soft-prompt-tasks": Claim("Soft prompts are fine for simple classification, limited for complex "
                               "generation", "07_soft_prompts"),
    "prompting-first": Claim("Don't fine-tune first: prompting and retrieval solve many problems "
                             "before any training", "08_evaluation"),
}


@dataclass(frozen=True)
class Result:
    """What a chapter found about a claim on one profile: its measurement, the real-scale
    computation where size matters, and a verdict."""

    claim_id: str
    measured: str
    at_scale: str          # computed for real models ("" where size does not matter)
    verdict: str
    chapter: str


def verdict_of(*parts_hold: bool) -> str:
    """The verdict on a claim of several parts: "holds" if all hold, "does not hold here" if none."""
    if all(parts_hold):
        return "holds"
    return "holds partly" if any(parts_hold) else "does not hold here"


def results_dir(profile: str | Profile | None = None, root: str | Path | None = None) -> Path:
    """Where a profile's results go: `<root>/<profile name>/`; root defaults to `$FTCOURSE_RESULTS`,
    else `results` (beside the notebooks when they run)."""
    root = root if root is not None else os.environ.get("FTCOURSE_RESULTS", "results")
    return Path(root) / get_profile(profile).name


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")     # one per process: never shared
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, path)


@contextmanager
def _checks_held(folder: Path) -> Iterator[Path]:
    """`folder`'s checks.json, for this process alone while the block reads and rewrites it:
    chapters that run at the same time (`make test` runs several) would otherwise lose each
    other's claims. POSIX's fcntl lock (tested); on Windows msvcrt's, on the file's first byte
    (not tried: no Windows machine here)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "checks.lock", "a+") as lock:
        if os.name == "nt":
            import msvcrt

            lock.seek(0)
            msvcrt.locking(lock.fileno(), msvcrt.LK_LOCK, 1)    # retries for 10 s, then raises
            try:
                yield folder / "checks.json"
            finally:
                lock.seek(0)
                msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)                    # released when the file closes
            yield folder / "checks.json"


class Chapter:
    """A chapter's claims on one profile: asserted where calibrated, shown and recorded elsewhere."""

    def __init__(self, name: str, profile: str | Profile | None = None, root: str | Path | None = None):
        self.name = name
        self.profile = get_profile(profile)
        self.calibrated = self.profile == CALIBRATED
        self.folder = results_dir(self.profile, root)
        _write_json(self.folder / "run.json", describe_run(self.profile))
        with _checks_held(self.folder) as path:     # a chapter that runs again states its claims afresh
            if path.is_file():
                _write_json(path, {key: check for key, check in json.loads(path.read_text()).items()
                                   if check["chapter"] != name})

    @property
    def runs(self) -> Path:
        """The profile's folder of finished fine-tuning runs that chapters share (`finetune(reuse=...)`)."""
        return self.folder / "runs"

    def expect(self, holds: Any, claim: str, measured: Any = "") -> bool:
        """State one claim about what was measured; True if it holds on this profile.

        Raises AssertionError where the chapter was calibrated and the claim fails there.
        """
        holds = bool(holds)
        with _checks_held(self.folder) as path:     # every chapter's checks on this profile, read afresh
            checks = json.loads(path.read_text()) if path.is_file() else {}
            checks[f"{self.name}: {claim}"] = {"chapter": self.name, "claim": claim, "holds": holds,
                                               "measured": str(measured)}
            _write_json(path, checks)
        shown = f"{claim}" + (f" (measured: {measured})" if str(measured) else "")
        if self.calibrated:
            assert holds, f"This chapter's claim no longer holds on the {self.profile.name} profile: {shown}"
        else:
            print(f"{'holds' if holds else 'DOES NOT HOLD'} on {self.profile.name}: {shown}")
        return holds

    def record(self, claim_id: str, *, measured: str, verdict: str, at_scale: str = "") -> Path:
        """Save this chapter's finding about one of the article's claims (replacing the last run's),
        and print it in one line: the cell that calls this is hidden on the site, its line is not."""
        if claim_id not in CLAIMS:
            raise ValueError(f"Unknown claim {claim_id!r}; the ledger's claims are: {', '.join(CLAIMS)}.")
        if verdict not in VERDICTS:
            raise ValueError(f"Verdict must be one of {VERDICTS}, got {verdict!r}.")
        path = self.folder / f"{claim_id}.json"
        _write_json(path, asdict(Result(claim_id, measured, at_scale, verdict, CLAIMS[claim_id].chapter)))
        print(f"Claims ledger, \"{CLAIMS[claim_id].text}\": {verdict} on {self.profile.name}. {measured}"
              + (f" At scale: {at_scale}" if at_scale else ""))
        return path

    def save_table(self, table: Any, name: str) -> Path:
        """Write a results table as `<name>.csv` in this profile's results, the index as its first
        column, for the pages that read what the chapters measured (`read_table`)."""
        path = self.folder / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.reset_index(names=table.index.name or "method").to_csv(path, index=False)
        return path


def describe_run(profile: Profile) -> dict[str, str]:
    """The model, dtype and machine of a run, for the ledger's column headings."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()})"
    return {"profile": profile.name, "model": profile.base_model, "dtype": profile.dtype, "device": device}


def read_table(name: str, profile: str | Profile | None = None, root: str | Path | None = None) -> Any:
    """A table a chapter saved with `Chapter.save_table`; an error names the file to produce."""
    import pandas as pd

    path = results_dir(profile, root) / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path.resolve()} is missing: run the chapter notebook that saves "
                                f"{name!r} on this profile first (its results go there).")
    return pd.read_csv(path)


def load_results(folder: Path, *, complete: bool) -> dict[str, Result]:
    """The results saved in one profile's folder; with `complete`, an error names the chapters
    to run for any claim without one."""
    found = {claim_id: Result(**json.loads((folder / f"{claim_id}.json").read_text()))
             for claim_id in CLAIMS if (folder / f"{claim_id}.json").is_file()}
    if complete and (missing := [claim_id for claim_id in CLAIMS if claim_id not in found]):
        chapters = sorted({CLAIMS[claim_id].chapter for claim_id in missing})
        raise FileNotFoundError(f"No saved result for claim(s) {missing} in {folder.resolve()}; run "
                                f"the chapter notebook(s) {chapters} first (they save their results there).")
    return found


def profile_folders(profile: str | Profile | None = None, root: str | Path | None = None) -> list[Path]:
    """The results folder of each profile that ran under `root`: `profile`'s (whose results must be
    there) first."""
    home = results_dir(profile, root)
    return [home, *sorted(folder for folder in home.parent.glob("*/")
                          if folder != home and (folder / "run.json").is_file())]


def column_name(folder: Path) -> str:
    """A profile's column heading: its name, model, dtype and device."""
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    details = ", ".join(run[key] for key in ("model", "dtype", "device") if key in run)
    return f"{folder.name} ({details})" if details else folder.name


def ledger_table(profile: str | Profile | None = None, root: str | Path | None = None) -> Any:
    """The ledger as a DataFrame: each claim, its chapter, and per profile that has run, what was
    measured and the verdict; the real-scale computation once. `profile`'s results must be complete."""
    import pandas as pd

    folders = profile_folders(profile, root)
    results = [load_results(folder, complete=index == 0) for index, folder in enumerate(folders)]
    rows = []
    for claim_id, claim in CLAIMS.items():
        row = {"the article says": claim.text, "checked in": claim.chapter}
        for folder, found in zip(folders, results):
            result = found.get(claim_id)
            row[f"measured: {column_name(folder)}"] = result.measured if result else "not run"
            row[f"verdict: {folder.name}"] = result.verdict if result else "not run"
        row["computed at real scale"] = results[0][claim_id].at_scale
        rows.append(row)
    return pd.DataFrame(rows)


def checks_table(profile: str | Profile | None = None, root: str | Path | None = None,
                 measured: bool = False) -> Any:
    """Every claim the chapters checked, one row each, with whether it held on each profile run
    (and, with `measured`, what was measured there)."""
    import pandas as pd

    columns = {}
    for folder in profile_folders(profile, root):
        name, path = folder.name, folder / "checks.json"
        checks = json.loads(path.read_text()) if path.is_file() else {}
        columns[name] = {(check["chapter"], check["claim"]): "holds" if check["holds"] else "does not hold"
                         for check in checks.values()}
        if measured:
            columns[f"measured: {name}"] = {(check["chapter"], check["claim"]): check["measured"]
                                            for check in checks.values()}
    table = pd.DataFrame(columns).fillna("not run")
    table.index.names = ["chapter", "claim"]
    return table.sort_index(level=0, sort_remaining=False)
