"""Shared fixtures. Tests never touch the network: the hub is switched off before anything loads."""

import os
import signal

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("FTCOURSE_PROFILE", None)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def base():
    """The embedded base model and tokenizer, loaded once (tests must not change its weights)."""
    from ftcourse.models import load_base

    return load_base()


@pytest.fixture(scope="session")
def ctrl_c_as_in_a_terminal():
    """Popen keywords that give a child Ctrl-C as a terminal gives it: SIGINT at its default. A
    runner started in the background (`make test &` in a script) ignores SIGINT, and so, unless
    told otherwise, does every process it starts, and a test of Ctrl-C would wait for nothing."""
    return {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


@pytest.fixture(scope="session")
def tokenizer(base):
    return base[1]


@pytest.fixture
def tiny_llama(tokenizer):
    """A fresh random Llama, smaller than the base model, with the base model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


@pytest.fixture
def train_steps():
    """A function: `steps` AdamW steps of a model on one fixed random batch; the losses."""
    def run(model, steps: int = 4, lr: float = 1e-2) -> list[float]:
        ids = torch.randint(4, 1000, (4, 16), generator=torch.Generator().manual_seed(1))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        losses = []
        for _ in range(steps):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses

    return run


COUNTING_VOCAB = 64          # the vocabulary of `make_model`, which `make_data` counts within


@pytest.fixture
def make_model():
    """A function: a fresh 2-layer Llama (vocabulary 64), seeded, for the training-loop tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=COUNTING_VOCAB, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                             max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        return LlamaForCausalLM(config)

    return make


@pytest.fixture
def make_data():
    """A function: `count` sequences of varied length following a learnable rule (each token is the
    previous + 1), labelled from the second token."""
    def make(count: int = 24, seed: int = 0) -> list[dict[str, list[int]]]:
        generator = torch.Generator().manual_seed(seed)
        data = []
        for _ in range(count):
            length = int(torch.randint(5, 12, (1,), generator=generator))
            start = int(torch.randint(3, COUNTING_VOCAB - 12, (1,), generator=generator))
            ids = list(range(start, start + length))
            data.append({"input_ids": ids, "labels": [-100, *ids[1:]]})
        return data

    return make


@pytest.fixture
def recorded():
    """The exercises' RESULTS log, emptied for one test and restored after it."""
    from ftcourse.exercises.core import RESULTS

    saved = RESULTS.copy()
    RESULTS.clear()
    yield RESULTS
    RESULTS[:] = saved
