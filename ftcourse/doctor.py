"""`ftcourse doctor`: what this machine has, checked rather than assumed.

Python, torch, the accelerator, the bitsandbytes 4-bit backend (by quantizing a tensor), every
dependency's version against the tested range in the package metadata, and whether the embedded
model loads. The first step of every lab: a problem shows here, not halfway through a chapter.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and whether it is fine."""

    name: str
    value: str
    ok: bool
    note: str = ""


def tested_ranges() -> dict[str, str]:
    """{distribution: specifier} of ftcourse's dependencies, from the installed metadata."""
    ranges = {}
    for line in metadata.requires("ftcourse") or []:
        requirement = Requirement(line)
        if requirement.marker is None:  # extras ("book", "test") carry a marker
            ranges[requirement.name] = str(requirement.specifier)
    return ranges


def in_tested_range(version: str, specifier: str) -> bool:
    """Whether `version` (local labels such as +cpu ignored) satisfies `specifier`."""
    try:
        return Version(version.split("+")[0]) in Requirement(f"x{specifier}").specifier
    except InvalidVersion:
        return False


def check_versions() -> list[Check]:
    checks = []
    for name, specifier in tested_ranges().items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            checks.append(Check(name, "not installed", False, f"tested {specifier}; pip install -e ."))
            continue
        ok = in_tested_range(version, specifier)
        checks.append(Check(name, version, ok, f"tested {specifier}" + ("" if ok else " (outside!)")))
    return checks


def check_accelerator() -> list[Check]:
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return [Check("cuda", f"{torch.version.cuda}: {names}", True, "GPU profiles available")]
    return [Check("cuda", "not available", True, "CPU only: the tiny profile runs here")]


def check_bitsandbytes() -> Check:
    """Quantize a small tensor to NF4 and back on every device present."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnbf
        import torch
    except Exception as err:  # a broken install raises anything from ImportError to RuntimeError
        return Check("bitsandbytes 4-bit", "import failed", False, f"{type(err).__name__}: {err}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    working = []
    for device in devices:
        try:
            weight = torch.randn(64, 64, device=device)
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
            error = (bnbf.dequantize_4bit(packed, state) - weight).abs().max().item()
            if error < 1.0:
                working.append(device)
        except Exception as err:  # any backend failure means 4-bit is unusable on that device
            return Check("bitsandbytes 4-bit", bitsandbytes.__version__, False,
                         f"NF4 failed on {device}: {type(err).__name__}: {err}")
    return Check("bitsandbytes 4-bit", bitsandbytes.__version__, True, f"NF4 works on {', '.join(working)}")


def check_embedded_model() -> Check:
    try:
        began = time.perf_counter()
        from ftcourse.models import load_base

        model, _ = load_base(profile="tiny")
        seconds = time.perf_counter() - began
        count = sum(p.numel() for p in model.parameters())
        return Check("embedded model", f"{count:,} parameters", True, f"loaded in {seconds:.1f} s")
    except Exception as err:  # report whatever went wrong instead of crashing the report
        return Check("embedded model", "failed to load", False, f"{type(err).__name__}: {err}")


def run_checks() -> list[Check]:
    """Every check of the report, in the order it is printed."""
    import os

    import torch

    from ftcourse.profiles import get_profile

    python_ok = sys.version_info >= (3, 10)
    checks = [Check("python", platform.python_version(), python_ok, "needs >= 3.10"),
              Check("platform", f"{platform.system()} {platform.machine()}", True,
                    f"{os.cpu_count()} CPUs, torch uses {torch.get_num_threads()} threads")]
    try:
        profile = get_profile()
        checks.append(Check("profile", profile.name, True, profile.description))
    except ValueError as err:
        checks.append(Check("profile", os.environ.get("FTCOURSE_PROFILE", ""), False, str(err)))
    return (checks + check_accelerator() + [check_bitsandbytes()] + check_versions()
            + [check_embedded_model()])


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok ' if c.ok else 'BAD'} {c.name:<{width}}  {c.value}  {c.note}".rstrip() for c in checks]
    bad = sum(not c.ok for c in checks)
    verdict = f"; {bad} need attention." if bad else "."
    lines.append(f"{len(checks) - bad} of {len(checks)} checks ok{verdict}")
    return "\n".join(lines)
