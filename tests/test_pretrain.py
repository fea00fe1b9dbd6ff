import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from ftcourse.cli import main
from ftcourse.data import default_world
from ftcourse.data.corpus import pretraining_documents
from ftcourse.data.reading import chance_level, reading_probes
from ftcourse.data.world import recall_probes
from ftcourse.evaluate import perplexity, recall_accuracy
from ftcourse.models import EMBEDDED_MODEL
from ftcourse.pretrain import PretrainConfig, pack_documents


@pytest.fixture(scope="module")
def held_out(tokenizer):
    """Pretraining-style text the model never trained on (a seed no run uses)."""
    return pack_documents(tokenizer, pretraining_documents(default_world(), 300, seed=987), 256)


def test_shipped_model_is_genuinely_pretrained(base, held_out):
    model, _ = base
    torch.manual_seed(0)
    untrained = LlamaForCausalLM(model.config)
    trained_loss = math.log(perplexity(model, held_out))
    untrained_loss = math.log(perplexity(untrained, held_out))
    assert untrained_loss > 0.9 * math.log(model.config.vocab_size)   # chance level
    assert trained_loss < 0.2 * untrained_loss, (trained_loss, untrained_loss)


def test_shipped_model_recalls_world_facts(base):
    model, tokenizer = base
    probes = recall_probes(default_world())
    recall = recall_accuracy(model, tokenizer, probes).mean()
    torch.manual_seed(0)
    untrained = recall_accuracy(LlamaForCausalLM(model.config), tokenizer, probes).mean()
    assert recall >= 0.8, recall
    assert untrained < 0.1


def test_model_card_records_how_the_model_was_made():
    history = json.loads((EMBEDDED_MODEL / "pretrain_history.json").read_text())
    summary = history["summary"]
    card = (EMBEDDED_MODEL / "MODEL_CARD.md").read_text()
    assert summary["command"].startswith("ftcourse pretrain") and summary["command"] in card
    assert f"| seed | {summary['config']['seed']} |" in card
    assert f"{summary['held_out_loss']:.4f}" in card
    assert len(history["loss"]) == summary["config"]["max_steps"] == history["evals"][-1]["step"]
    assert f"{summary['reading_in_context']:.1%} of {summary['reading_probes']}" in card


@pytest.fixture(scope="module")
def pretrained_twice(tmp_path_factory):
    """Two folders, each written by the same `ftcourse pretrain` command (12 steps)."""
    folders = [tmp_path_factory.mktemp(run) for run in ("first", "second")]
    for folder in folders:
        assert main(["pretrain", "--out", str(folder), "--max-steps", "12", "--no-progress"]) == 0
    return folders


def test_pretrain_command_runs_and_its_loss_falls(pretrained_twice):
    folder = pretrained_twice[0]
    history = json.loads((folder / "pretrain_history.json").read_text())
    assert history["loss"][-1] < history["loss"][0] - 1.0, history["loss"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "MODEL_CARD.md"} <= {
        p.name for p in folder.iterdir()}


def test_pretrain_config_rejects_bad_values():
    with pytest.raises(ValueError, match="hidden_size must be a multiple of 64"):
        PretrainConfig(hidden_size=100)
    with pytest.raises(ValueError, match="max_steps must be >= 1, got 0"):
        PretrainConfig(max_steps=0)


def test_shipped_model_reads_its_context_and_only_its_context(base):
    model, tokenizer = base
    world = default_world()
    present = recall_accuracy(model, tokenizer, reading_probes(world, 200)).mean()
    absent = recall_accuracy(model, tokenizer, reading_probes(world, 200, passage=False)).mean()
    assert present >= 0.9, present
    assert absent < 2 * chance_level(), absent


def test_pretraining_is_reproducible_bit_for_bit(pretrained_twice):
    from safetensors.torch import load_file

    first, second = (load_file(folder / "model.safetensors") for folder in pretrained_twice)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    tokenizers = [(folder / "tokenizer.json").read_text() for folder in pretrained_twice]
    assert tokenizers[0] == tokenizers[1]
