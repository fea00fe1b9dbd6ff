"""The claims ledger: every claim of the article, the chapter that checks it, and what it found.

A chapter calls `record(claim_id, measured=..., verdict=...)` right after the `assert`s that
check a claim, which writes one JSON file into the results folder (`$FTCOURSE_RESULTS`, default
`results/` beside the notebooks). The ledger page reads them all with `ledger_table()`: its rows
come from what the chapters measured in the same build, so they cannot drift from them, and a
claim whose chapter has not saved a result is an error that names the chapter to run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERDICTS = ("holds", "holds partly", "does not hold here")


@dataclass(frozen=True)
class Claim:
    """One claim of the article, in its words, and the chapter whose experiment checks it."""

    text: str
    chapter: str


CLAIMS: dict[str, Claim] = {
    "ffn-two-thirds": Claim("The FFN holds roughly two-thirds of a transformer's parameters",
                            "01_transformer_internals"),
    "instruction-lora-independent": Claim("Instruction tuning (the data) and LoRA (the method) are "
                                          "independent choices", "02_sft_instruction_tuning"),
    "full-ft-7b-memory": Claim("Full fine-tuning of a 7B model needs 100+ GB of VRAM", "04_full_vs_peft"),
    "peft-trainable-share": Claim("PEFT trains ~0.1-2% of the parameters", "04_full_vs_peft"),
    "peft-memory": Claim("PEFT needs 10-100x less memory", "04_full_vs_peft"),
    "peft-quality": Claim("PEFT reaches 90-99% of full fine-tuning quality", "04_full_vs_peft"),
    "peft-speed": Claim("PEFT trains faster", "04_full_vs_peft"),
    "peft-forgetting": Claim("PEFT has a lower risk of catastrophic forgetting", "04_full_vs_peft"),
    "qlora-65b": Claim("QLoRA fine-tunes a 65B model on a single GPU", "04_full_vs_peft"),
    "lora-adapters-swap": Claim("LoRA adapters are MBs, not GBs, and swap on a single base model", "05_lora"),
    "soft-prompt-size": Claim("Soft prompts train only thousands of parameters (vs millions for LoRA), "
                              "in KB-sized files", "07_soft_prompts"),
    "soft-prompt-tasks": Claim("Soft prompts are fine for simple classification, limited for complex "
                               "generation", "07_soft_prompts"),
    "prompting-first": Claim("Don't fine-tune first: prompting and retrieval solve many problems "
                             "before any training", "08_evaluation"),
}


@dataclass(frozen=True)
class Result:
    """What a chapter found about a claim: the tiny model's number, the real-scale one, a verdict."""

    claim_id: str
    measured: str          # on the tiny profile, with its number
    at_scale: str          # computed for real models ("" where size does not matter)
    verdict: str
    chapter: str


def results_dir() -> Path:
    return Path(os.environ.get("FTCOURSE_RESULTS", "results"))


def record(claim_id: str, *, measured: str, verdict: str, at_scale: str = "") -> Path:
    """Save a chapter's finding about one claim (overwriting the previous run's)."""
    if claim_id not in CLAIMS:
        raise ValueError(f"Unknown claim {claim_id!r}; the ledger's claims are: {', '.join(CLAIMS)}.")
    if verdict not in VERDICTS:
        raise ValueError(f"Verdict must be one of {VERDICTS}, got {verdict!r}.")
    result = Result(claim_id, measured, at_scale, verdict, CLAIMS[claim_id].chapter)
    path = results_dir() / f"{claim_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(result), indent=1))
    os.replace(temporary, path)
    return path


def load_results() -> dict[str, Result]:
    """Every saved result; an error names the chapters to run for any claim without one."""
    found = {}
    for claim_id in CLAIMS:
        path = results_dir() / f"{claim_id}.json"
        if path.is_file():
            found[claim_id] = Result(**json.loads(path.read_text()))
    if missing := [claim_id for claim_id in CLAIMS if claim_id not in found]:
        chapters = sorted({CLAIMS[claim_id].chapter for claim_id in missing})
        raise FileNotFoundError(f"No saved result for claim(s) {missing} in {results_dir().resolve()}; run "
                                f"the chapter notebook(s) {chapters} first (they save their results there).")
    return found


def ledger_table() -> Any:
    """The ledger as a DataFrame: claim, chapter, measured, at scale, verdict."""
    import pandas as pd

    rows = [{"the article says": CLAIMS[r.claim_id].text, "checked in": r.chapter,
             "measured (tiny model)": r.measured, "computed at real scale": r.at_scale, "verdict": r.verdict}
            for r in load_results().values()]
    return pd.DataFrame(rows)
