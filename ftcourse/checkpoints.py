"""Checkpoints: a training run's state on disk, written atomically and checked before it is loaded.

A checkpoint holds the trainable weights (safetensors), the optimizer and scheduler state and the
run's record (step, config, history); resuming from one continues exactly where the uninterrupted
run would be. Each is written into a temporary folder, flushed to disk and renamed, with a manifest
of its files' sizes and sha256 hashes: a killed run leaves whole checkpoints (and a `.tmp-` folder,
ignored), and a resume skips, with a warning, any whose files were damaged since. optimizer.pt
loads with weights_only=True: no pickled code runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "state.json")
MANIFEST = "manifest.json"                # {file: {"bytes": size, "sha256": hex}}, written last


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters by name: all a checkpoint needs besides the frozen base."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Copy `weights` (as `trainable_state` gives them) into the model's parameters of those names."""
    params = dict(model.named_parameters())
    for name, tensor in weights.items():
        params[name].copy_(tensor)


def save_checkpoint(directory: Path, model: nn.Module, optimizer: Any, scheduler: Any,
                    state: dict[str, Any]) -> Path:
    """Write `directory/step-N/` atomically: into a temporary folder, flushed to disk, then renamed.

    `state` is the run's JSON record: its `step`, its `config` (a dict) and whatever else it needs
    to continue (the training loop keeps its history there).

    A crash leaves a whole checkpoint or a `.tmp-step-N` leftover that resuming ignores; manifest.json,
    written last, records each file's size and sha256, so a later resume can check the files are intact.
    """
    from safetensors.torch import save_file

    step = state["step"]
    final = directory / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = directory / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in CHECKPOINT_FILES}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    # Without fsync the rename can reach the disk before the data: after a power cut the folder
    # would exist with empty or partial files.
    for name in (*CHECKPOINT_FILES, MANIFEST):
        _fsync(tmp / name)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)      # a checkpoint of the same step from an earlier run
    os.replace(tmp, final)
    _fsync(directory)                             # make the rename itself durable
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The intact checkpoint with the highest step in `directory`, or None.

    `.tmp-step-N` leftovers of interrupted saves never count; a damaged `step-N` folder is skipped
    with a warning, so a resume falls back to the checkpoint before it.
    """
    directory = Path(directory)
    for leftover in sorted(directory.glob(f".tmp-{CHECKPOINT_PREFIX}*")):
        warnings.warn(f"Ignoring {leftover}: a checkpoint whose save was interrupted (half-written). "
                      "The run resumes from the newest complete checkpoint and overwrites it when it "
                      "saves that step.", stacklevel=2)
    found = [path for path in directory.glob(f"{CHECKPOINT_PREFIX}*")
             if path.is_dir() and path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
    for path in sorted(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)),
                       reverse=True):
        if not (problems := checkpoint_problems(path)):
            return path
        warnings.warn(f"Skipping damaged checkpoint {path}: {'; '.join(problems)}. Falling back to the "
                      f"checkpoint before it, if any. The damaged folder is left on disk, not deleted: "
                      f"inspect or delete it (a resumed run replaces it when it saves that step again).",
                      stacklevel=2)
    return None


def checkpoint_problems(path: str | Path) -> list[str]:
    """What is wrong with the files of checkpoint `path`, checked against its manifest; [] if intact.

    The manifest catches accidents (a crash, a full disk, a bad copy), not tampering: anyone can
    rewrite it. Against a malicious optimizer.pt, `load_checkpoint` relies on weights_only=True.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return [f"{MANIFEST} is missing (files were deleted since the save, or an older ftcourse "
                "wrote this checkpoint)"]
    except (OSError, ValueError) as error:
        return [f"{MANIFEST} is unreadable ({error})"]
    problems = [f"{name} is not listed in {MANIFEST}" for name in CHECKPOINT_FILES if name not in manifest]
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif (size := file.stat().st_size) != expected["bytes"]:
            kind = "truncated" if size < expected["bytes"] else "too long"
            problems.append(f"{name} is {kind}: expected {expected['bytes']} bytes, got {size}")
        elif (digest := _sha256(file)) != expected["sha256"]:
            problems.append(f"{name} is corrupt: sha256 hash mismatch (expected "
                            f"{expected['sha256'][:12]}..., got {digest[:12]}...)")
    return problems


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: Any, scheduler: Any,
                    config: dict[str, Any]) -> dict[str, Any]:
    """Restore a checkpoint into the model, optimizer and scheduler; return the run's saved state.

    `config` is the run's config as a dict: a checkpoint saved under another one is refused. Its
    files are read and checked before anything is restored: a damaged or unsafe one changes nothing.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if problems := checkpoint_problems(path):
        raise ValueError(f"Checkpoint {path} is damaged: {'; '.join(problems)}. Resume from an earlier "
                         f"{CHECKPOINT_PREFIX}N folder in {path.parent}, or delete this one: "
                         "train(resume=True) skips damaged checkpoints and takes the newest intact one.")
    state = json.loads((path / "state.json").read_text())
    if state["config"] != config:
        saved = state["config"]       # a field the saving ftcourse lacked reads as None
        changed = {k: (saved.get(k), config.get(k)) for k in {**saved, **config}
                   if saved.get(k) != config.get(k)}
        raise ValueError(f"Checkpoint {path} was written with a different TrainConfig "
                         f"(field: (saved, now)) {changed}. Resume with the same config, or start "
                         f"a fresh run in another checkpoint_dir.")
    weights = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(f"Checkpoint {path} holds trainable weights {sorted(set(weights) ^ expected)[:5]} "
                         "that do not match this model's trainable parameters; was it made with "
                         "another model or method?")
    try:
        extra = torch.load(path / "optimizer.pt", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path / 'optimizer.pt'} holds objects other than tensors, so it was not "
                         "written by ftcourse; it is refused for safety (torch.load with weights_only=True "
                         "runs no code from the file). Delete this checkpoint, or resume from one you "
                         "wrote yourself.") from error
    load_trainable_state(model, weights)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    return state


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    # Flush a file's data, or a folder's entries, to the disk. Windows flushes only handles opened
    # for writing and cannot open a folder, so there the folder flush is skipped.
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
