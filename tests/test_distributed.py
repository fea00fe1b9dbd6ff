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

from ftcourse.models import load_base
from ftcourse.tolerance import assert_close, loss_path, transformer_path
from ftcourse.train import TrainConfig, train

# Both sides sum the same per-item gradients in another order (half batches, micro-batches, then the
# all-reduce), so on equal weights their loss and gradients differ by rounding only: the tolerance
# rule. After the first update that no longer bounds anything: AdamW divides by sqrt(v), so a
# gradient entry near zero, whose sign a rounding can flip, moves its weight by up to 2 lr either
# way (`tolerance.adam_bound`), in float64 runs too, since a Llama computes its RMSNorms in float32
# whatever its dtype. So the runs are compared where they start from equal weights: the first
# step's loss (a wrong data split changes it) and gradient norm (the one check of the gradients'
# scale, which clipping and AdamW hide from the weights), and the learning rate of every step.
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


@pytest.mark.equivalence
@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method, dtype", RUNS)
def test_two_processes_train_like_one(two_processes, method, dtype):
    path = two_processes / f"{method}-{dtype}.safetensors"
    with safe_open(path, "pt") as saved:
        their_history = json.loads(saved.metadata()["history"])
        trained = {name: saved.get_tensor(name) for name in saved.keys()}   # noqa: SIM118 (not a dict)
    ours, our_history = train_tiny(method, dtype, batch_size=GLOBAL_BATCH)
    assert len(our_history) == len(their_history) and sorted(ours) == sorted(trained)
    assert [h["lr"] for h in our_history] == [h["lr"] for h in their_history]   # the same arithmetic
    config = load_base(profile="tiny")[0].config
    longest = config.max_position_embeddings                 # no sequence of the data is longer
    forward = transformer_path(config, longest)
    loss_n = loss_path(config, longest, longest * GLOBAL_BATCH)
    first, their_first = our_history[0], their_history[0]
    # float32 whatever the model's dtype: the RMSNorms, and the loop's sum of the logged loss.
    assert_close(first["loss"], their_first["loss"], n=loss_n, dtype=torch.float32, msg="loss")
    gradient_n = loss_n + forward + sum(p.numel() for p in ours.values())   # backward, then the norm
    assert_close(first["grad_norm"], their_first["grad_norm"], n=gradient_n, dtype=torch.float32,
                 msg="gradient norm")


def test_train_warns_when_fsdp_is_asked_for_but_off(monkeypatch, tiny_llama):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")          # what an FSDP accelerate config sets
    data = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10, 11]}]
    with pytest.warns(UserWarning, match=r"FSDP was asked for .* did not turn it on.* NO with 1 process"):
        train(tiny_llama, data, TrainConfig(max_steps=1, batch_size=2), progress=False)
