"""The one training loop in two processes (DDP over gloo, on the CPU) trains as in one, to rounding.

A module fixture launches tests/distributed_train.py under `torch.distributed.run`: two processes,
each taking half of every global batch in two micro-batches. Each test then trains the same runs
in this process with the whole global batch at once, and compares the final trainable weights and
the logged loss and gradient norm of every step.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_train import GLOBAL_BATCH, RUNS, train_tiny
from safetensors import safe_open
from safetensors.torch import load_file

from ftcourse.train import TrainConfig, train

# Both sides sum the same per-item gradients in another order (half batches, micro-batches, then the
# all-reduce), so they differ by rounding only. In float64 that stays tiny (measured 1e-13; other data
# orders 6e-15 to 4e-14): the STYLE row "same math, different code". In float32 AdamW amplifies it:
# each update is m / (sqrt(v) + eps), so a gradient entry that cancels to near zero, where one
# rounding is a large relative change, moves by a fair share of lr. Measured with lr 1e-3 over 4
# steps: 2.7e-6 (LoRA 8e-7); other data orders and splits 8e-7 to 4.7e-5. Hence atol lr / 10; a
# data or loss bug moves many weights by ~lr.
WEIGHTS_ATOL = {"float64": 1e-12, "float32": 1e-4}
# The loop sums losses in float32 whatever the dtype (measured 1e-7); in float32 runs the loss and
# gradient norm also follow the weights' differences (measured 1e-5). The gradient norm is the one
# check of the gradients' scale: clipping (norms ~30 > 1) and AdamW hide it from the weights.
HISTORY_RTOL = {"float64": 1e-6, "float32": 1e-4}
SCRIPT = Path(__file__).with_name("distributed_train.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The folder where two gloo processes on loopback left the result of every run in RUNS."""
    out = tmp_path_factory.mktemp("two-processes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), str(out)]
    launched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-4000:]
    return out


@pytest.fixture
def one_thread():
    """Train on one thread, as each launched process does: with two cores shared, more is slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method, dtype", RUNS)
def test_two_processes_train_like_one(two_processes, method, dtype):
    path = two_processes / f"{method}-{dtype}.safetensors"
    theirs = load_file(path)
    with safe_open(path, "pt") as saved:
        their_history = json.loads(saved.metadata()["history"])
    ours, our_history = train_tiny(method, dtype, batch_size=GLOBAL_BATCH)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=WEIGHTS_ATOL[dtype])
    for key in ("loss", "grad_norm", "lr"):
        torch.testing.assert_close([h[key] for h in our_history], [h[key] for h in their_history],
                                   rtol=HISTORY_RTOL[dtype], atol=0.0,
                                   msg=lambda message, key=key: f"{key}: {message}")


def test_train_warns_when_fsdp_is_asked_for_but_off(monkeypatch, tiny_llama):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")          # what an FSDP accelerate config sets
    data = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10, 11]}]
    with pytest.warns(UserWarning, match=r"FSDP was asked for .* did not turn it on.* NO with 1 process"):
        train(tiny_llama, data, TrainConfig(max_steps=1, batch_size=2), progress=False)
