"""Retrieval and prompting: the rungs of the decision ladder below fine-tuning.

The article: "don't fine-tune first". Before training, try a plain prompt, a few-shot prompt (a
few solved examples before the question) and retrieval-augmented generation (RAG: the passages
most relevant to the question, found by a search index, before it). `BM25` is that index:
Okapi BM25 (Robertson et al.) with rank_bm25's defaults (k1 = 1.5, b = 0.75, and idf floored at
0.25 x the mean idf for words in more than half the documents); tests/test_retrieval.py proves
its scores equal rank_bm25's. Knowledge then comes at inference time, from the passages.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftcourse.data.world import QUESTIONS, STATEMENTS
from ftcourse.evaluate import score_task, words
from ftcourse.experiments import Run, fine_tune_all
from ftcourse.lora import LoRA
from ftcourse.train import TrainConfig


class BM25:
    """A BM25 index over documents: `scores(query)` per document, `search(query, k)` the best k."""

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        if not documents:
            raise ValueError("BM25 needs at least one document to index.")
        self.documents, self.k1, self.b = list(documents), k1, b
        self.counts = [Counter(words(document)) for document in self.documents]
        self.lengths = np.array([sum(count.values()) for count in self.counts], dtype=float)
        self.mean_length = self.lengths.mean()
        if self.mean_length == 0:
            raise ValueError("Every document is empty: BM25 has no words to index.")
        n = len(self.documents)
        frequency = Counter(word for count in self.counts for word in count)   # documents with the word
        # log((N - df + 0.5) / (df + 0.5)): rare words weigh most; common ones can go negative.
        self.idf = {word: math.log(n - df + 0.5) - math.log(df + 0.5) for word, df in frequency.items()}
        floor = epsilon * sum(self.idf.values()) / len(self.idf)
        self.idf = {word: floor if idf < 0 else idf for word, idf in self.idf.items()}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query` (a repeated query word counts each time)."""
        length_norm = self.k1 * (1 - self.b + self.b * self.lengths / self.mean_length)
        total = np.zeros(len(self.documents))
        for word in words(query):
            frequency = np.array([count.get(word, 0) for count in self.counts], dtype=float)
            total += self.idf.get(word, 0.0) * frequency * (self.k1 + 1) / (frequency + length_norm)
        return total

    def search(self, query: str, k: int = 3) -> list[str]:
        """The `k` best-scoring documents, best first (ties keep index order)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        order = np.argsort(-self.scores(query), kind="stable")[:k]
        return [self.documents[i] for i in order]


def few_shot_prompt(question: str, examples: Sequence[dict[str, str]]) -> str:
    """`question` after solved examples ("Q: ... A: ..."), so the model continues with an answer."""
    shots = "".join(f"Q: {ex['instruction']}\nA: {ex['response']}\n\n" for ex in examples)
    return f"{shots}Q: {question}\nA:"


def rag_prompt(prompt: str, passages: Sequence[str]) -> str:
    """`prompt` (a question, or the start of the answer's sentence) after the retrieved passages."""
    return " ".join([*passages, prompt])


def statement_prompt(question: str) -> str:
    """Prompt engineering for a base model: the question about a person rewritten as the start of
    a sentence it read in pretraining ("What is the job of X?" -> "X works as a"), so that its
    natural continuation is the answer."""
    for attribute, templates in QUESTIONS.items():
        for template in templates:
            pattern = re.escape(template).replace(re.escape("{n}"), "(?P<name>.+)")
            if match := re.fullmatch(pattern, question.strip()):
                sentence = next(t for t in STATEMENTS[attribute] if t.endswith("{v}."))
                return sentence.split("{v}")[0].format(n=match["name"]).rstrip()
    raise ValueError(f"No question template matches {question!r}; statement_prompt rewrites the "
                     "world's questions (ftcourse.data.world.QUESTIONS) only.")


def engineered_prompt(question: str) -> str:
    """The ladder's prompt-engineering rung: a question about the synthetic world as the start of
    its pretraining sentence (`statement_prompt`), any other question (a public dataset's, on the
    GPU profiles) as "<question>\\nAnswer:", the framing base models read in web text."""
    try:
        return statement_prompt(question)
    except ValueError:
        return f"{question.strip()}\nAnswer:"


def ladder_runs(seed: int = 0, lr_scale: float = 1.0) -> dict[str, Run]:
    """The ladder's two trained rungs: LoRA (all linear layers, r=8) and full fine-tuning, 4 epochs
    each, at the tiny model's learning rates times `lr_scale` (a profile's, for a larger model)."""
    return {rung: Run(method, TrainConfig(epochs=4, lr=lr * lr_scale, batch_size=16, seed=seed))
            for rung, (method, lr) in {"LoRA": (LoRA(r=8, alpha=16, targets="all-linear"), 1e-2),
                                       "full fine-tuning": ("full", 1e-3)}.items()}


def climb_ladder(base: Any, tokenizer: Any, splits: Any, index: BM25, seed: int = 0,
                 lr_scale: float = 1.0, reuse: str | Path | None = None) -> tuple[dict, dict]:
    """Score every rung of the decision ladder on one task: the plain question, three solved
    examples first, a prompt in the words of the pretraining text, RAG with the top 2 passages,
    then the trained rungs of `ladder_runs` (loaded from `reuse` where an earlier chapter stored them).

    Returns ({rung: TaskScore}, {rung: fine-tuned model}) for the two trained rungs.
    """
    test, shots = list(splits["test"]), list(splits["train"])[:3]
    prompted = {"few-shot": lambda row: few_shot_prompt(row["instruction"], shots),
                "prompt engineering": lambda row: engineered_prompt(row["instruction"]),
                "RAG": lambda row: rag_prompt(engineered_prompt(row["instruction"]),
                                              index.search(row["instruction"], k=2))}
    rungs = {"question": score_task(base, tokenizer, test)}
    rungs |= {rung: score_task(base, tokenizer, test, max_new_tokens=8, prompt=prompt)
              for rung, prompt in prompted.items()}
    trained = fine_tune_all(base, tokenizer, splits["train"], test, ladder_runs(seed, lr_scale), reuse=reuse)
    rungs |= {rung: run.score for rung, run in trained.items()}
    return rungs, {rung: run.model for rung, run in trained.items()}
