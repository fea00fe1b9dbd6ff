"""The experiment harness: runs on the same data, tabulated the way a chapter compares methods."""

import math

import pytest

from ftcourse.data import default_world, load_task
from ftcourse.data.world import recall_probes
from ftcourse.evaluate import forgetting
from ftcourse.experiments import Run, fine_tune_all, memory_table, method_table, probe_batch
from ftcourse.lora import LoRA
from ftcourse.methods import count_trainable
from ftcourse.sft import finetune
from ftcourse.train import TrainConfig


@pytest.fixture(scope="module")
def experiment(base):
    model, tokenizer = base
    qa = load_task("qa")
    train_rows, test_rows = qa["train"].select(range(32)), list(qa["test"])[:8]
    runs = {"full": Run("full", TrainConfig(max_steps=2, batch_size=8, lr=1e-3)),
            "LoRA": Run(LoRA(r=4, targets="all-linear"), TrainConfig(max_steps=2, batch_size=8, lr=1e-2))}
    held_out = [{"input_ids": [1, 40, 41, 42, 43], "labels": [1, 40, 41, 42, 43]}]
    probes = recall_probes(default_world())[:4]
    trained = fine_tune_all(model, tokenizer, train_rows, test_rows, runs, held_out=held_out, probes=probes)
    return trained, train_rows, test_rows, runs, held_out, probes


def test_each_run_is_what_finetune_gives_alone(base, experiment):
    model, tokenizer = base
    trained, train_rows, _, runs, _, _ = experiment
    import copy

    alone, result = finetune(copy.deepcopy(model), tokenizer, train_rows, runs["LoRA"].method,
                             runs["LoRA"].config, progress=False)
    assert [h["loss"] for h in result.history] == [h["loss"] for h in trained["LoRA"].result.history]
    assert trained["LoRA"].ms_per_step == 1000 * trained["LoRA"].result.seconds / 2


def test_the_table_holds_what_each_run_costs_and_reaches(base, experiment):
    model, tokenizer = base
    trained, _, test_rows, _, held_out, probes = experiment
    before = forgetting(model, tokenizer, held_out, probes)
    table = method_table(trained, model, probe=probe_batch(tokenizer, test_rows, 4), before=before)
    assert list(table.index) == ["full", "LoRA"]
    assert table.loc["full", "trainable"] == count_trainable(model)["total"]
    lora = table.loc["LoRA"]
    assert lora["trainable %"] == 100 * lora["trainable"] / table.loc["full", "trainable"]
    assert table.loc["full", "% of full FT"] == 100 or math.isnan(table.loc["full", "% of full FT"])
    assert table.loc["LoRA", "saved MB"] < 0.2 * table.loc["full", "saved MB"]
    assert table.loc["LoRA", "exact match"] == trained["LoRA"].score.ci.estimate
    change = trained["LoRA"].forgetting["held-out loss"] - before["held-out loss"]
    assert table.loc["LoRA", "held-out loss change"] == change
    assert table.loc["LoRA", "peak MB modelled"] > 0 and "peak MB measured" not in table


def test_memory_table_sets_the_model_against_the_profiler(base, experiment):
    model, tokenizer = base
    _, _, test_rows, _, _, _ = experiment
    table = memory_table(model, {"full": "full", "LoRA": LoRA(r=4)}, probe_batch(tokenizer, test_rows, 2),
                         checkpointing=("LoRA",))
    assert list(table.index) == ["full", "LoRA", "LoRA + checkpointing"]
    assert (abs(table["predicted / measured"] - 1) < 0.15).all()



def test_a_preview_computes_a_gpu_run_without_downloading_anything():
    from ftcourse.data import count_rows
    from ftcourse.experiments import preview_runs
    from ftcourse.memory import Setup, estimate
    from ftcourse.params import REAL_MODELS, flops_per_token

    runs = {"full": ("qa", Run("full", TrainConfig(epochs=4, batch_size=16))),
            "DPO": ("preferences", Run("full", TrainConfig(max_steps=100, batch_size=8)))}
    table = preview_runs(runs, "gpu", rows_per_example={"DPO": 2})
    smollm = REAL_MODELS["SmolLM2-360M"]
    full = table.loc["full"]
    assert (full["train rows"], full["steps"]) == (count_rows("qa", "gpu"), 4 * 3000 // 16) == (3000, 750)
    assert full["peak GB (memory model)"] == estimate(smollm, Setup(precision="bf16", batch_size=16,
                                                                     seq_len=1024)).peak / 1e9
    assert full["PFLOP (at most)"] == flops_per_token(smollm, 1024)["train_step"] * 750 * 16 * 1024 / 1e15
    dpo = table.loc["DPO"]
    assert dpo["steps"] == 100 and dpo["peak GB (memory model)"] == estimate(
        smollm, Setup(precision="bf16", batch_size=16, seq_len=1024)).peak / 1e9
    with pytest.raises(ValueError, match="names no model shape"):
        preview_runs(runs, "tiny")
    from ftcourse.adapters import IA3

    # IA3 is counted on a model with it applied only: no peak from a config alone
    ia3 = preview_runs({"IA3": ("routing", Run(IA3(), TrainConfig(max_steps=10, batch_size=8)))}).loc["IA3"]
    assert math.isnan(ia3["peak GB (memory model)"]) and ia3["steps"] == 10
