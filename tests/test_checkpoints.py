"""Interrupted training loses nothing, and checkpoints load safely (ftcourse/checkpoints.py).

A run killed with SIGKILL in the middle of writing a checkpoint resumes to the very weights of an
uninterrupted run; a checkpoint damaged later is skipped with a warning, and loading it directly
says what is wrong; pickled code in optimizer.pt is refused and never runs.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ftcourse.checkpoints import MANIFEST, checkpoint_problems, latest_checkpoint, load_checkpoint
from ftcourse.train import TrainConfig, TrainResult, make_optimizer, train

SCRIPT = Path(__file__).with_name("interrupted_train.py")
CONFIG = TrainConfig(max_steps=6, batch_size=4, lr=5e-3, weight_decay=0.1, save_every=2)


def start_script(checkpoint_dir: Path, **env: str) -> subprocess.Popen:
    """tests/interrupted_train.py on one thread; results in `checkpoint_dir`.safetensors and .log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    with open(checkpoint_dir.with_suffix(".log"), "w") as log:     # the child keeps its own handle
        return subprocess.Popen([sys.executable, str(SCRIPT), str(checkpoint_dir),
                                 str(checkpoint_dir.with_suffix(".safetensors"))],
                                env=env, stdout=subprocess.PIPE, stderr=log, text=True)


def finish(process: subprocess.Popen, timeout: float = 120) -> int:
    """The exit code of `process`, killed if it runs longer than `timeout` seconds."""
    try:
        process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process.returncode


def read_result(checkpoint_dir: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    path = checkpoint_dir.with_suffix(".safetensors")
    with safe_open(path, "pt") as saved:
        history = json.loads(saved.metadata()["history"])
    return load_file(path), history


def step_folders(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.mark.slow
def test_run_killed_while_saving_resumes_to_the_same_weights(tmp_path):
    # Two cores: the uninterrupted reference and the run to kill start together, one thread each.
    reference = start_script(tmp_path / "reference")
    killed = start_script(tmp_path / "killed", HANG_AT_STEP="6")
    bound = threading.Timer(120, killed.kill)       # the loop below waits at most this long
    bound.start()
    for line in killed.stdout:                      # until it hangs inside the save of step 6
        if line.strip() == "HANGING":
            break
    bound.cancel()
    killed.kill()                                   # SIGKILL: no cleanup, no atexit, nothing flushed
    finish(killed)
    assert finish(reference) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert step_folders(tmp_path / "killed") == [".tmp-step-0000006", "step-0000002", "step-0000004"], (
        (tmp_path / "killed.log").read_text()[-3000:])
    # Killed mid-save: the weights and optimizer state of step 6 written, its history and manifest not.
    assert step_folders(tmp_path / "killed" / ".tmp-step-0000006") == ["optimizer.pt",
                                                                       "trainable.safetensors"]

    resumed = start_script(tmp_path / "killed")
    assert finish(resumed) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    ours, our_history = read_result(tmp_path / "killed")
    theirs, their_history = read_result(tmp_path / "reference")
    assert our_history == their_history
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    # Every checkpoint is kept (the script runs 12 steps, save_every=2), the half-written one redone.
    assert step_folders(tmp_path / "killed") == [f"step-{step:07d}" for step in range(2, 13, 2)]


@pytest.fixture
def run_dir(tmp_path, make_model, make_data) -> tuple[Path, torch.nn.Module, TrainResult]:
    """A finished CONFIG run: its checkpoint folder (steps 2, 4, 6), trained model and result."""
    model = make_model()
    result = train(model, make_data(), CONFIG, checkpoint_dir=tmp_path, progress=False)
    return tmp_path, model, result


def test_truncated_latest_checkpoint_is_skipped_and_the_run_still_ends_the_same(run_dir, make_model,
                                                                                 make_data):
    directory, uninterrupted, full = run_dir
    weights = directory / "step-0000006" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])       # as if the disk filled up mid-write
    with pytest.warns(UserWarning, match=r"step-0000006: trainable.safetensors is truncated: expected "
                                         r"\d+ bytes, got 1000.*left on disk, not deleted"):
        assert latest_checkpoint(directory).name == "step-0000004"
    assert weights.exists()

    resumed_model = make_model(seed=123)                   # different weights: the checkpoint must win
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint"):
        resumed = train(resumed_model, make_data(), CONFIG, checkpoint_dir=directory, resume=True,
                        progress=False)
    assert resumed.history == full.history
    for (name, a), (_, b) in zip(uninterrupted.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert checkpoint_problems(directory / "step-0000006") == []   # saved again, whole


@pytest.mark.parametrize("name, damage, message", [
    pytest.param("optimizer.pt", "delete", "optimizer.pt is missing", id="missing"),
    pytest.param("trainable.safetensors", "truncate",
                 r"trainable.safetensors is truncated: expected \d+ bytes, got 8", id="truncated"),
    pytest.param("state.json", "flip a byte", "state.json is corrupt: sha256 hash mismatch", id="corrupt"),
    pytest.param(MANIFEST, "delete", "manifest.json is missing", id="no-manifest"),
])
def test_load_checkpoint_names_the_damaged_file(run_dir, name, damage, message, make_model):
    directory, _, _ = run_dir
    folder = directory / "step-0000004"
    data = bytearray((folder / name).read_bytes())
    if damage == "delete":
        (folder / name).unlink()
    elif damage == "truncate":
        (folder / name).write_bytes(data[:8])
    else:
        data[-1] ^= 0xFF                                    # same size: only the hash can tell
        (folder / name).write_bytes(data)
    model = make_model()
    optimizer = make_optimizer(model, CONFIG)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(ValueError, match=rf"Checkpoint .*step-0000004 is damaged: {message}.*Resume from "
                                         r"an earlier step-N folder .*, or delete this one"):
        load_checkpoint(folder, model, optimizer, scheduler, asdict(CONFIG))


class RunsCode:
    """Unpickling this runs exec(source): what a malicious checkpoint would do."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


def test_pickled_code_in_optimizer_state_is_refused_and_never_runs(run_dir, make_model, make_data):
    directory, _, _ = run_dir
    folder = directory / "step-0000006"
    marker = directory / "payload-ran"
    torch.save({"optimizer": RunsCode(f"open({str(marker)!r}, 'w').close()")}, folder / "optimizer.pt")
    # Rewrite the manifest to match, so that only the pickle check stands in the way.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["optimizer.pt"] = {"bytes": (folder / "optimizer.pt").stat().st_size,
                                "sha256": hashlib.sha256((folder / "optimizer.pt").read_bytes()).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint_problems(folder) == []

    model = make_model(seed=123)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"optimizer.pt holds objects other than tensors, so it was not "
                                         r"written by ftcourse; it is refused for safety.*weights_only=True"):
        train(model, make_data(), CONFIG, checkpoint_dir=directory, resume=True, progress=False)
    assert not marker.exists()
    assert all(torch.equal(p, before[name]) for name, p in model.state_dict().items())   # nothing restored
    torch.load(folder / "optimizer.pt", weights_only=False)    # the payload is live: an unsafe load runs it
    assert marker.exists()
