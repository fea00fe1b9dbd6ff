"""Profiles: one switch that moves every chapter from a laptop CPU to a GPU and a real model.

A profile picks the base model, the data source, the dtype and the batch size; the code does not
branch on the profile anywhere else. Choose one with the `FTCOURSE_PROFILE` environment variable
or pass `profile=` to any function that takes one.

Three variables adapt a profile to where it runs, without changing the code path:
`FTCOURSE_MODEL` (a local copy of the model, or another hub id), `FTCOURSE_DATA_DIR` (local copies
of the hub datasets, as `ftcourse download` writes them: for air-gapped labs, a proxy, a mounted
drive) and `FTCOURSE_DTYPE` (e.g. float32, to run a GPU profile's code on a CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Profile:
    """Where and at what size the course runs."""

    name: str
    base_model: str               # "embedded" (the package's tiny model), a hub id or a local path
    data: Literal["synthetic", "hub"]
    dtype: Literal["float32", "bfloat16"]
    batch_size: int
    max_seq_len: int
    description: str
    data_dir: str | None = None   # local copies of the hub datasets (None: the hub and its cache)
    shape: str | None = None      # the model's entry in ftcourse.params.REAL_MODELS, for predictions
    # The chapters' learning rates were tuned on the tiny model; a run on this profile multiplies
    # them by this (a larger model wants smaller steps: full fine-tuning of SmolLM2-360M ~3e-5).
    lr_scale: float = 1.0


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", "embedded", "synthetic", "float32", 32, 256,
                    "the embedded pretrained tiny Llama and the synthetic world, fp32 on the CPU"),
    "gpu": Profile("gpu", "HuggingFaceTB/SmolLM2-360M", "hub", "bfloat16", 16, 1024,
                   "a real small base model from the hub and real public datasets, bf16 on one GPU",
                   shape="SmolLM2-360M", lr_scale=0.03),
    "gpu-large": Profile("gpu-large", "meta-llama/Llama-3.1-8B", "hub", "bfloat16", 4, 2048,
                         "a 7B-class model for QLoRA on one GPU, bf16 compute", shape="Llama-3-8B",
                         lr_scale=0.01),
}
DEFAULT_PROFILE = "tiny"


def get_profile(profile: str | Profile | None = None) -> Profile:
    """The named profile; None reads `FTCOURSE_PROFILE` (default "tiny")."""
    if isinstance(profile, Profile):
        return profile
    name = profile if profile is not None else os.environ.get("FTCOURSE_PROFILE", DEFAULT_PROFILE)
    if name not in PROFILES:
        source = "FTCOURSE_PROFILE" if profile is None else "profile"
        raise ValueError(f"Unknown {source} {name!r}; known profiles: {', '.join(PROFILES)}. "
                         f"Set {source} to one of them (the default is {DEFAULT_PROFILE!r}).")
    return with_local_overrides(PROFILES[name])


def with_local_overrides(profile: Profile) -> Profile:
    """`profile` with FTCOURSE_MODEL, FTCOURSE_DATA_DIR and FTCOURSE_DTYPE applied, where set."""
    overrides: dict[str, str] = {}
    if model := os.environ.get("FTCOURSE_MODEL"):
        overrides["base_model"] = model
    if data_dir := os.environ.get("FTCOURSE_DATA_DIR"):
        overrides["data_dir"] = data_dir
    if dtype := os.environ.get("FTCOURSE_DTYPE"):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"FTCOURSE_DTYPE must be float32, bfloat16 or float16, got {dtype!r}.")
        overrides["dtype"] = dtype
    return replace(profile, **overrides) if overrides else profile
