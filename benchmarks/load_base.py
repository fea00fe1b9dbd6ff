"""Loading the embedded base model: `ftcourse.models.load_base` against transformers' own two calls.

    python benchmarks/load_base.py            # 7 interleaved rounds
    python benchmarks/load_base.py --quick    # 2 rounds (what the tests run)

Ours is `load_base(profile="tiny")`: the tokenizer and the safetensors weights from the package's
folder, offline, plus its checks (safetensors only, a pad token distinct from the end of text).
The library's is `AutoTokenizer.from_pretrained` + `AutoModelForCausalLM.from_pretrained` on the
same folder. Both models are checked to hold the same weights before anything is timed. This
replaces a timed test (`load_base() < 10 s`): a test fails on a slow machine and passes on a fast
one, whatever the code does; a ratio measured in one run does not. Goal: ours <= 1.2x.
"""

from __future__ import annotations

from functools import partial

import torch
from comparison import Comparison, command_line, interleaved_seconds, median, spread

from ftcourse.models import EMBEDDED_MODEL, load_base

GOAL = 1.2


def library_load() -> tuple[object, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, use_safetensors=True, local_files_only=True),
            AutoTokenizer.from_pretrained(EMBEDDED_MODEL, local_files_only=True))


def run(quick: bool = False, repeats: int | None = None) -> list[Comparison]:
    """Time both ways of loading the embedded model and tokenizer, interleaved."""
    ours, theirs = load_base(profile="tiny")[0], library_load()[0]
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    reps = repeats or (2 if quick else 7)
    seconds = interleaved_seconds({"ours": partial(load_base, profile="tiny"), "library": library_load},
                                  reps, warmup=1)
    return [Comparison("load the embedded model", "seconds", median(seconds["ours"]),
                       median(seconds["library"]), GOAL, higher_is_better=False,
                       details={"repeats": reps, "seconds": seconds},
                       spread=spread(seconds["ours"], seconds["library"]))]


def main(argv: list[str] | None = None) -> list[Comparison]:
    return command_line(run, __doc__.split("\n")[0], "two rounds", argv)


if __name__ == "__main__":
    main()
