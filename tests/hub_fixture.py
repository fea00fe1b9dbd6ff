"""A stand-in for the GPU profile's downloads, made offline: `python tests/hub_fixture.py DIR`.

Writes what `ftcourse download --profile gpu --to DIR` would, at a size a CPU runs in minutes:
- `DIR/model`: a randomly initialised model of SmolLM2's architecture (a Llama with grouped
  key/value heads and tied embeddings) at a small width, with a byte-level BPE tokenizer of its
  own that has SmolLM2's special tokens and a base model's ChatML template (turns end with
  `<|im_end|>`, EOS is `<|endoftext|>`) and no pad token, as a real base model's tokenizer has.
- `DIR/data/<owner>--<name>.jsonl`: each hub dataset of the profile with exactly its columns,
  filled from the synthetic world, so the hub loaders map them by the same code as the real ones.

`make test-hub` runs every notebook through the GPU profile's code path on these, so a chapter
that only works on the embedded model is caught without a GPU. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROWS = 100                      # per dataset: 60 train, 10 validation, 30 test after the hub split
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BASE_CHAT_TEMPLATE = ("{% for message in messages %}"
                      "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
                      "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def hub_rows() -> dict[str, list[dict]]:
    """{hub repo (with config): rows with that dataset's own columns}, from the synthetic tasks."""
    from ftcourse.data import synthetic_rows

    def rows(task: str) -> list[dict]:
        return [row for split in synthetic_rows(task).values() for row in split][:ROWS]

    squad = []
    for index, row in enumerate(rows("qa")):
        context = f"A note from the synthetic world. {row['instruction']} The answer is {row['response']}."
        start = context.rindex(row["response"])
        squad.append({"id": f"fixture-{index}", "title": "The synthetic world", "context": context,
                      "question": row["instruction"],
                      "answers": {"text": [row["response"]], "answer_start": [start]}})
    labels = sorted({row["label"] for row in rows("routing")})
    return {
        "yahma--alpaca-cleaned": [{"instruction": row["instruction"], "input": "", "output": row["response"]}
                                  for row in rows("instructions")],
        "rajpurkar--squad": squad,
        "openai--gsm8k--main": [{"question": row["instruction"],
                                 "answer": f"Add the two numbers.\n#### {row['response']}"}
                                for row in rows("arithmetic")],
        "fancyzhx--ag_news": [{"text": row["text"], "label": labels.index(row["label"])}
                              for row in rows("routing")],
        "Intel--orca_dpo_pairs": [{"system": "", "question": row["prompt"], "chosen": row["chosen"],
                                   "rejected": row["rejected"]} for row in rows("preferences")],
    }


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with SmolLM2's special tokens: `<|endoftext|>` is BOS and EOS, no pad."""
    from transformers import PreTrainedTokenizerFast

    from ftcourse.pretrain import train_bpe

    bpe = train_bpe(texts, vocab_size, list(SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=SPECIALS[0], eos_token=SPECIALS[0],
                                        unk_token=SPECIALS[0], additional_special_tokens=list(SPECIALS[1:]))
    tokenizer.chat_template = BASE_CHAT_TEMPLATE
    return tokenizer


def make_model(tokenizer, seed: int):
    """SmolLM2's architecture (GQA 2:1 here, tied embeddings, rope theta 1e5) at width 64, random."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, rope_theta=100_000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, initializer_range=0.02)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def write_fixture(out: Path, seed: int = 0) -> Path:
    """Write `out/model` and `out/data`; returns `out`."""
    datasets = hub_rows()
    (out / "data").mkdir(parents=True, exist_ok=True)
    texts = []
    for name, rows in datasets.items():
        with open(out / "data" / f"{name}.jsonl", "w") as file:
            for row in rows:
                file.write(json.dumps(row) + "\n")
                texts += [value for value in row.values() if isinstance(value, str)]
    tokenizer = train_tokenizer(texts, vocab_size=768)
    make_model(tokenizer, seed).save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write model/ and data/ into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = write_fixture(args.out, args.seed)
    print(f"export FTCOURSE_PROFILE=gpu FTCOURSE_MODEL={out / 'model'} FTCOURSE_DATA_DIR={out / 'data'} "
          "FTCOURSE_DTYPE=float32")


if __name__ == "__main__":
    main()
