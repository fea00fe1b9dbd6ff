"""`ftcourse doctor`: what this machine has, checked rather than assumed.

Python, torch, the accelerator, the bitsandbytes 4-bit backend (by quantizing a tensor) and
whether its CPU kernels are exact on this CPU (bitsandbytes 0.50.2's are not on some), every
dependency's version against the tested range in the package metadata, whether the embedded
model loads, and the safe-loading settings: pickle files refused, torch.load's weights_only, remote
code off, the hub online or not. The first step of every lab: a problem shows here, not halfway
through a chapter. Each check imports what it checks inside itself, so a broken piece is one
failed line of the report, not a doctor that cannot start.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

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


def check_bitsandbytes_exact() -> Check:
    """Whether bitsandbytes' CPU 4-bit kernels give the definition's values on this CPU: measured
    by two probes (ftcourse.quant, ftcourse.qlora), since the kernels bitsandbytes picks depend on it."""
    name = "bitsandbytes 4-bit exact on this CPU"
    try:
        from ftcourse.qlora import bitsandbytes_eval_error
        from ftcourse.quant import bitsandbytes_dequantize_mismatches

        wrong, eval_error = bitsandbytes_dequantize_mismatches(), bitsandbytes_eval_error()
    except Exception as err:  # a broken install raises anything; check_bitsandbytes reports it too
        return Check(name, "unknown", False, f"{type(err).__name__}: {err}")
    found = []
    if wrong:
        found.append(f"its AVX-512 dequantize_4bit is wrong for rows of {', '.join(map(str, wrong))} values")
    if eval_error > 1e-4:   # float32 gives ~1e-7, bfloat16's 8-bit mantissa ~1e-3
        found.append(f"Linear4bit in eval mode computes in bfloat16 (error {eval_error:.0e}) and then "
                     "passes no gradient")
    if not found:
        return Check(name, "yes", True, "dequantize_4bit and eval-mode Linear4bit give float32's values")
    return Check(name, "no", True, "; ".join(found) + ". ftcourse's own 4-bit code is unaffected; see "
                 "the book's page 'A bug report for bitsandbytes'")


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


# ---------------------------------------------------------------- safe loading

class _PickledCall:
    """A harmless pickle payload: unpickling it calls Check(...) where a malicious file would call
    os.system, so a load that does not raise has run code from the file."""

    def __reduce__(self) -> tuple:
        return (Check, ("pickled code", "ran", False))


def check_safetensors_only() -> Check:
    """Offer load_base and the adapter reader a folder whose weights are pickle files only; both
    must refuse it for want of safetensors."""
    import tempfile
    from pathlib import Path

    import torch

    from ftcourse.lora import read_adapter_weights
    from ftcourse.models import EMBEDDED_MODEL, load_base

    with tempfile.TemporaryDirectory() as folder:
        for file in EMBEDDED_MODEL.iterdir():     # the embedded model's config and tokenizer, no weights
            if file.suffix != ".safetensors":
                (Path(folder) / file.name).write_bytes(file.read_bytes())
        loads = {"pytorch_model.bin": lambda: load_base(folder, profile="tiny"),
                 "adapter_model.bin": lambda: read_adapter_weights(folder)}
        loaded, unclear = [], []
        for name, load in loads.items():
            torch.save({}, Path(folder) / name)
            try:
                load()
                loaded.append(f"loaded {name}: a pickle file can run code")
            except (OSError, ValueError) as err:   # refused; it must be for want of safetensors
                reason = f"{err} {err.__cause__ or ''}"
                if "safetensors" not in reason:
                    unclear.append(f"{name} failed otherwise: {reason[:120]}")
    if loaded or unclear:
        return Check("weights format", "pickle loads" if loaded else "unverified", False,
                     "; ".join(loaded + unclear))
    return Check("weights format", "safetensors only", True,
                 "model and adapter folders holding only .bin (pickle) weights are refused")


def check_torch_load() -> Check:
    """torch.load a pickle that calls a function, with weights_only=True and with torch's default."""
    import io
    import pickle

    import torch

    buffer = io.BytesIO()
    torch.save(_PickledCall(), buffer)
    ran = []
    for kwargs, label in (({"weights_only": True}, "weights_only=True"), ({}, "the default")):
        buffer.seek(0)
        try:
            torch.load(buffer, **kwargs)
            ran.append(label)
        except pickle.UnpicklingError:               # what weights_only raises for a forbidden global
            pass
    version = f"torch {torch.__version__}"
    if ran:
        return Check("torch.load", "runs pickled code", False, f"{version}: with {' and '.join(ran)} "
                     "it ran a pickle's function (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set?)")
    return Check("torch.load", "weights_only=True", True,
                 f"{version} refused a pickle that calls a function, with it and by default")


def check_remote_code() -> Check:
    """load_base's default for trust_remote_code, and the one variable transformers reads about it."""
    import inspect
    import os

    from ftcourse.models import load_base

    default = inspect.signature(load_base).parameters["trust_remote_code"].default
    # transformers reads no variable that turns remote model code on; TRUST_REMOTE_CODE (true values
    # as its strtobool takes them) lets its RAG retriever unpickle an index.
    variable = os.environ.get("TRUST_REMOTE_CODE", "")
    unpickles = variable.lower() in ("1", "y", "yes", "t", "true", "on")
    note = (f"load_base's default; TRUST_REMOTE_CODE={variable} lets transformers unpickle RAG indexes"
            if unpickles else "load_base's default; no environment variable turns it on")
    return Check("trust_remote_code", "off by default" if default is False else f"default {default!r}",
                 default is False and not unpickles, note)


def check_hub_offline() -> Check:
    """Informational: whether the Hugging Face hub may download (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return Check("HF_HUB_OFFLINE", "offline", True, "models load from local folders and the cache only")
    return Check("HF_HUB_OFFLINE", "online", True, "a model not in the cache downloads from the hub")


# ---------------------------------------------------------------- the selected profile

def check_profile(profile: Any) -> list[Check]:
    """What a GPU profile needs here: a GPU with bfloat16, the model and the datasets in the cache
    or a local copy, and memory for the chapters' largest run. The tiny profile needs none of it."""
    if profile.base_model == "embedded" and profile.data == "synthetic":
        return []
    download = (f"where there is network, run `ftcourse download --profile {profile.name} --to DIR` and "
                "set FTCOURSE_MODEL=DIR/model and FTCOURSE_DATA_DIR=DIR/data here")
    return [*check_profile_device(profile), check_profile_model(profile, download),
            check_profile_datasets(profile, download), check_profile_memory(profile)]


def check_profile_device(profile: Any) -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        if profile.dtype == "float32":   # FTCOURSE_DTYPE=float32: the GPU path's code on a CPU, for tests
            return [Check("profile device", "CPU, float32", True, "the GPU path's code on the CPU")]
        return [Check("profile device", "no CUDA GPU", False,
                      f"the {profile.name} profile trains a real model in {profile.dtype} on a GPU; run on a "
                      "machine with one (e.g. Colab: Runtime > Change runtime type > GPU), or use "
                      "FTCOURSE_PROFILE=tiny on this one")]
    name = torch.cuda.get_device_name()
    checks = [Check("profile device", name, True, f"{torch.cuda.device_count()} GPU(s)")]
    if profile.dtype == "bfloat16":
        bf16 = torch.cuda.is_bf16_supported()
        checks.append(Check("bfloat16", "supported" if bf16 else "not supported", bf16,
                            "" if bf16 else f"{name} predates bfloat16 (Ampere or later has it); set "
                            "FTCOURSE_DTYPE=float32 (twice the memory) or use a newer GPU"))
    return checks


def model_config_file(source: str) -> str | None:
    """The model's config.json in a local folder or the Hugging Face cache, without downloading."""
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    folder = Path(source).expanduser()
    if folder.is_dir():
        return str(folder / "config.json") if (folder / "config.json").is_file() else None
    if source.count("/") != 1:
        return None
    found = try_to_load_from_cache(source, "config.json")
    return found if isinstance(found, str) else None


def check_profile_model(profile: Any, download: str) -> Check:
    if model_config_file(profile.base_model):
        return Check("profile model", profile.base_model, True, "in the cache or a local folder")
    return Check("profile model", profile.base_model, False,
                 f"not downloaded: {download} (or `huggingface-cli download {profile.base_model}`)")


def dataset_cached(repo: str) -> bool:
    """Whether `datasets` can load `repo` offline: its files in the hub cache or its prepared copy."""
    from pathlib import Path

    import datasets
    from huggingface_hub import constants

    hub_copy = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / repo.replace("/", "___")
    return hub_copy.is_dir() or prepared.is_dir()


def check_profile_datasets(profile: Any, download: str) -> Check:
    from ftcourse.data.hub import HUB_TASKS, local_file

    if profile.data_dir:
        missing = [str(local_file(task, profile.data_dir)) for task in HUB_TASKS.values()
                   if not local_file(task, profile.data_dir).is_file()]
        where = f"local copies in {profile.data_dir}"
    else:
        missing = [task.repo for task in HUB_TASKS.values() if not dataset_cached(task.repo)]
        where = "the Hugging Face cache"
    if not missing:
        return Check("profile datasets", f"{len(HUB_TASKS)} of {len(HUB_TASKS)}", True, f"in {where}")
    return Check("profile datasets", f"{len(HUB_TASKS) - len(missing)} of {len(HUB_TASKS)}", False,
                 f"missing from {where}: {', '.join(missing)}; {download}")


def check_profile_memory(profile: Any) -> Check:
    """Predicted peak of the chapters' largest run, full fine-tuning with AdamW at the profile's
    batch and sequence length, against the GPU's memory."""
    import torch

    from ftcourse.memory import GB, Setup, estimate, precision_of
    from ftcourse.params import REAL_MODELS

    config_file = model_config_file(profile.base_model)
    if config_file:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config_file)
    elif profile.shape:
        config = REAL_MODELS[profile.shape]
    else:
        return Check("profile memory", "unknown", True, "the model's config is not here to predict from")
    peak = estimate(config, Setup(precision=precision_of(profile.dtype), batch_size=profile.batch_size,
                                  seq_len=profile.max_seq_len)).peak
    run = f"full fine-tuning, AdamW, {profile.batch_size} x {profile.max_seq_len} tokens: {peak / GB:.1f} GB"
    if not torch.cuda.is_available():
        return Check("profile memory", f"{peak / GB:.1f} GB predicted", True, f"{run}; no GPU to compare")
    total = torch.cuda.get_device_properties(0).total_memory
    fits = peak < 0.9 * total
    return Check("profile memory", f"{peak / GB:.1f} of {total / GB:.0f} GB", fits,
                 run + ("" if fits else "; more than 90% of this GPU: lower the batch size, turn on "
                        "gradient checkpointing, or use LoRA / QLoRA"))


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
        checks += check_profile(profile)
    except ValueError as err:
        checks.append(Check("profile", os.environ.get("FTCOURSE_PROFILE", ""), False, str(err)))
    return (checks + check_accelerator() + [check_bitsandbytes(), check_bitsandbytes_exact()]
            + check_versions() + [check_embedded_model(), check_safetensors_only(), check_torch_load(),
                                  check_remote_code(), check_hub_offline()])


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok ' if c.ok else 'BAD'} {c.name:<{width}}  {c.value}  {c.note}".rstrip() for c in checks]
    bad = sum(not c.ok for c in checks)
    verdict = f"; {bad} need attention." if bad else "."
    lines.append(f"{len(checks) - bad} of {len(checks)} checks ok{verdict}")
    return "\n".join(lines)
