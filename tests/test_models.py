import pytest

from ftcourse import load_base
from ftcourse.models import EMBEDDED_MODEL, ensure_distinct_pad


def test_embedded_model_loads_offline():
    # The hub is off for the tests (conftest.py); how fast it loads is a benchmark
    # (benchmarks/load_base.py), never a test.
    model, tokenizer = load_base()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size % 64 == 0 and model.config.intermediate_size % 64 == 0
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template


def test_embedded_model_is_small_and_uses_safetensors():
    files = {p.name: p.stat().st_size for p in EMBEDDED_MODEL.iterdir()}
    assert "model.safetensors" in files and not any(n.endswith((".bin", ".pt")) for n in files)
    assert sum(files.values()) < 10 * 2**20


def test_a_local_path_loads_through_the_same_code(tmp_path, base):
    model, tokenizer = base
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_base(str(tmp_path))
    assert again.config.to_dict()["hidden_size"] == model.config.hidden_size


def test_a_path_that_does_not_exist_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="Model path './no/such/model' does not exist"):
        load_base("./no/such/model")


def test_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_base(str(tmp_path))


def test_a_hub_id_offline_is_a_clear_error_not_a_hub_trace():
    with pytest.raises(FileNotFoundError, match=r"'some-org/some-model' is not a local folder.*offline.*"
                                                r"huggingface-cli download some-org/some-model"):
        load_base("some-org/some-model")


def test_unknown_profile_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="Unknown profile 'laptop'; known profiles: tiny, gpu, gpu-large"):
        load_base(profile="laptop")
    monkeypatch.setenv("FTCOURSE_PROFILE", "nope")
    with pytest.raises(ValueError, match="Unknown FTCOURSE_PROFILE 'nope'"):
        load_base()


def test_pad_equal_to_eos_is_replaced_by_a_new_token(tiny_llama, base):
    import copy

    tokenizer = copy.deepcopy(base[1])
    tokenizer.pad_token = tokenizer.eos_token
    size = tiny_llama.get_input_embeddings().weight.shape[0]
    with pytest.warns(UserWarning, match="missing or equals EOS"):
        ensure_distinct_pad(tiny_llama, tokenizer, pad_token="<|pad|>")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tiny_llama.config.pad_token_id == tokenizer.pad_token_id
    assert tiny_llama.get_input_embeddings().weight.shape[0] == size + 1


@pytest.fixture
def base_model_folder(tmp_path):
    """A base model as SmolLM2's ships: ChatML turns end with <|im_end|>, EOS is <|endoftext|>, no pad."""
    from hub_fixture import make_model, train_tokenizer

    tokenizer = train_tokenizer(["Where does Ann live? In Pelmora.", "2 plus 3 is 5."] * 20, vocab_size=300)
    make_model(tokenizer, seed=0).save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_a_base_models_turn_end_becomes_eos_so_fine_tuning_learns_to_stop(base_model_folder):
    from ftcourse.chat import tokenize_example
    from ftcourse.models import model_label

    turn_end = "ends an assistant turn with '<\\|im_end\\|>', not EOS '<\\|endoftext\\|>'"
    with pytest.warns(UserWarning, match=turn_end):
        model, tokenizer = load_base(str(base_model_folder))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == end == model.generation_config.eos_token_id
    example = tokenize_example(tokenizer, "Where does Ann live?", "In Pelmora.")
    learned = [t for t in example["labels"] if t != -100]
    assert end in learned and tokenizer.decode(learned).startswith("In Pelmora.<|im_end|>")
    assert tokenizer.pad_token_id not in (end, tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    assert model_label(model) == base_model_folder.name and model_label(load_base()[0]) == "ftcourse tiny"


def test_a_tokenizer_without_a_chat_template_gets_chatml(base_model_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcourse.chat import CHATML_TEMPLATE
    from ftcourse.models import ensure_chat_format

    model = AutoModelForCausalLM.from_pretrained(base_model_folder)
    tokenizer = AutoTokenizer.from_pretrained(base_model_folder)
    tokenizer.chat_template = None
    with pytest.warns(UserWarning, match="has no chat template"):
        ensure_chat_format(model, tokenizer)
    assert tokenizer.chat_template == CHATML_TEMPLATE and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"   # nothing ends a turn
    with pytest.raises(ValueError, match="ends an assistant turn with no special token"):
        ensure_chat_format(model, tokenizer)
