"""Finished fine-tuning runs kept in the results folder, so a chapter loads what an earlier one trained.

Several chapters fine-tune the same model on the same data with the same settings (the full
fine-tuning of `qa` for four epochs appears in chapters 2, 4 and 8). `trained_or_loaded` keeps each
finished run under a key that hashes everything its outcome depends on: the model as the loop gets
it (every tensor, which ones train, its modules), the tokenized examples, the TrainConfig, and the
code (every source file of this package, and the versions of torch and transformers). Loading puts
the trained parameters back, restores torch's random state as training left it and returns the
stored TrainResult, so what follows a loaded run is what follows a trained one, bit for bit
(tests/test_run_store.py). A changed line of code, data or config gives a new key: a new run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftcourse.checkpoints import load_trainable_state, trainable_state
from ftcourse.train import TrainConfig, TrainResult

PACKAGE = Path(__file__).resolve().parent


@cache
def code_digest() -> str:
    """sha256 of every source file of this package and of the torch and transformers versions."""
    import transformers

    digest = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_key(model: nn.Module, examples: Sequence[dict[str, Any]], config: TrainConfig, loss: str = "") -> str:
    """The hex key of a run: the model's tensors, trainable flags and modules, the examples, the
    config, the loss (named in `loss` when it is not the language model's own: DPO and its beta,
    the reward model's) and the code, hashed together."""
    digest = hashlib.sha256(code_digest().encode())
    digest.update(f"loss: {loss}".encode())
    digest.update(repr(model).encode())
    trains = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)} {trains.get(name)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps([{k: list(v) for k, v in ex.items()} for ex in examples]).encode())
    digest.update(json.dumps(asdict(config), sort_keys=True).encode())
    return digest.hexdigest()


def trained_or_loaded(folder: str | Path, model: nn.Module, examples: Sequence[dict[str, Any]],
                      config: TrainConfig, train_run: Callable[[], TrainResult],
                      loss: str = "") -> TrainResult:
    """The run stored under its key in `folder`, loaded into `model`; else `train_run()`, stored.

    `train_run` trains `model` in place on `examples` with `config` (the loop, with its loss and
    batching fixed by the caller; `loss` names that loss when it is not the language model's own,
    so that runs differing only in it get different keys). Runs on several processes are not stored.
    """
    from safetensors.torch import load_file, save_file

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return train_run()
    key = run_key(model, examples, config, loss)
    stored = Path(folder) / key
    if (stored / "result.json").is_file():
        record = json.loads((stored / "result.json").read_text())
        load_trainable_state(model, load_file(stored / "trained.safetensors"))
        states = load_file(stored / "rng.safetensors")
        torch.set_rng_state(states["cpu"])
        if "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"])
        model.eval()
        print(f"Loaded this run from {stored}, where an earlier run stored it "
              f"({len(record['history'])} steps); delete that folder to train it again.")
        return TrainResult(**record)
    result = train_run()
    writing = stored.with_name(f".tmp-{stored.name}-{os.getpid()}")
    shutil.rmtree(writing, ignore_errors=True)
    writing.mkdir(parents=True)
    save_file(trainable_state(model), writing / "trained.safetensors")
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    save_file(states, writing / "rng.safetensors")
    (writing / "result.json").write_text(json.dumps(asdict(result)))    # written last: the run is whole
    shutil.rmtree(stored, ignore_errors=True)
    os.replace(writing, stored)
    return result
