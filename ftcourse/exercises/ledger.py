"""Exercises on the claims ledger (chapter 09_claims_ledger): predicting what prefix tuning trains on a
65B model; an open experiment on whether a claim's verdict carries over from the tiny model to real ones.

The ledger page reads the other chapters' results, so it has no function to write. Both exercises
compute at real scale with the package (`ftcourse.params`, `ftcourse.memory`), as the ledger's
"computed at real scale" column does; the experiment's claim is checked against `ftcourse.ledger.CLAIMS`.
"""

from __future__ import annotations

from ftcourse.exercises.kinds import Field, Number, experiment, one_value_per, predict
from ftcourse.ledger import CLAIMS

predict("prefix_tuning_at_scale", chapter="09_claims_ledger",
        question="The article says soft prompts train 'only thousands of parameters (vs millions for LoRA)'. "
                 "How many parameters, in millions, does prefix tuning with 20 virtual tokens train on "
                 "LLaMA-65B? (LoRA r=8 on q_proj and v_proj trains 21 million there.)",
        form=Number(rel=0.25, low=0, unit="million"))


def _known_claim(finding: dict) -> str | None:
    claim = finding["claim"].strip()
    return None if claim in CLAIMS else (f"claim {claim!r} is not one of the ledger's claim ids: use one of "
                                         f"{', '.join(CLAIMS)}")


experiment("claim_at_scale", chapter="09_claims_ledger",
           question="Does a verdict carry over to a real model? Pick one claim of the ledger (its id, such "
                    "as 'peft-trainable-share') whose verdict rests on a quantity that changes with the "
                    "model's size: a share of parameters, a memory ratio, a file size, a count. Compute that "
                    "quantity with the package for the tiny model and for two models of REAL_MODELS or more, "
                    "and say from which size on the article's statement holds, and why.",
           fields={"claim": Field(str, min_len=3),
                   "parameters_billions": Field(list, item=float, low=0, min_len=3),
                   "values": Field(list, item=float, min_len=3),
                   "conclusion": Field(str, min_len=40)},
           checks=(_known_claim, one_value_per("parameters_billions", ["values"], "model size", "models")))
