"""save_trained writes what each method trained in its library's format, and nothing else."""

import copy
import json

import pytest
from safetensors.torch import load_file

from ftcourse.adapters import IA3, BottleneckAdapter
from ftcourse.lora import LoRA, lora_state_dict, read_adapter_config
from ftcourse.methods import RECOMMENDED, get_method, save_trained
from ftcourse.prompts import PromptTuning
from ftcourse.qlora import QLoRA


@pytest.mark.parametrize("method", [LoRA(r=4), QLoRA(r=4)])
def test_lora_and_qlora_save_an_adapter_that_reads_back(method, base, tmp_path):
    model = get_method(method).apply(copy.deepcopy(base[0]))
    folder = save_trained(model, method, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert read_adapter_config(folder).r == 4
    saved, ours = load_file(folder / "adapter_model.safetensors"), lora_state_dict(model)
    assert saved.keys() == ours.keys() and all(saved[k].equal(ours[k]) for k in saved)


def test_prompt_tuning_saves_the_soft_prompt_only(base, tmp_path):
    model = PromptTuning(num_virtual_tokens=5).apply(copy.deepcopy(base[0]))
    folder = save_trained(model, PromptTuning(num_virtual_tokens=5), tmp_path / "out")
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    assert [tuple(t.shape) for t in load_file(folder / "adapter_model.safetensors").values()] == [
        (5, base[0].config.hidden_size)]


@pytest.mark.parametrize("method", [IA3(), BottleneckAdapter(reduction_factor=16)])
def test_other_peft_methods_save_their_trainable_weights_only(method, base, tmp_path):
    model = method.apply(copy.deepcopy(base[0]))
    folder = save_trained(model, method, tmp_path / "out")
    saved = load_file(folder / "trainable.safetensors")
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert [p.name for p in folder.iterdir()] == ["trainable.safetensors"]
    assert saved.keys() == trainable.keys() and all(saved[k].equal(trainable[k]) for k in saved)


def test_full_fine_tuning_saves_the_whole_model_and_tokenizer(base, tmp_path):
    folder = save_trained(base[0], "full", tmp_path / "out", tokenizer=base[1])
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.endswith(".bin") for name in names)


def test_saved_megabytes_is_the_size_of_what_save_trained_writes(base, tmp_path):
    from ftcourse.methods import saved_megabytes

    model = LoRA(r=4).apply(copy.deepcopy(base[0]))
    folder = save_trained(model, LoRA(r=4), tmp_path / "out")
    assert saved_megabytes(model, LoRA(r=4)) == sum(f.stat().st_size for f in folder.iterdir()) / 1e6


@pytest.fixture(scope="module")
def qa_before(base):
    from ftcourse.data import load_task
    from ftcourse.evaluate import score_task

    test = list(load_task("qa")["test"])
    return test, score_task(*base, test)


@pytest.mark.parametrize("name", sorted(RECOMMENDED))
def test_each_methods_recommended_run_beats_the_base_model_on_qa(name, base, qa_before):
    """What `ftcourse finetune --method NAME --task qa` does with no other flag: the recommended
    config, its learning rate and 3 epochs; QA must rise clear of the base model."""
    from ftcourse.data import load_task
    from ftcourse.evaluate import score_task
    from ftcourse.sft import finetune

    test, before = qa_before
    train = load_task("qa")["train"]
    model, _ = finetune(copy.deepcopy(base[0]), base[1], train, RECOMMENDED[name][0], memory_check="off",
                        progress=False)
    after = score_task(model, base[1], test)
    assert after.ci.low > before.ci.high, (name, before.ci, after.ci)
