import numpy as np
import pytest
import torch
from rank_bm25 import BM25Okapi

from ftcourse.data import default_world
from ftcourse.data.world import biography
from ftcourse.evaluate import words
from ftcourse.retrieval import BM25, few_shot_prompt, rag_prompt
from ftcourse.tolerance import assert_close


def world_documents():
    import random
    rng = random.Random(0)
    return [biography(person, rng) for person in default_world().people]


@pytest.mark.equivalence
@pytest.mark.parametrize("query", ["Where does Kalo Torsel live?", "pilot pilot in Pelmora", "the the",
                                   "nobody knows this word"])
def test_scores_equal_rank_bm25(query):
    documents = world_documents() + ["", "the the the the", "a short one"]
    theirs = BM25Okapi([words(d) for d in documents]).get_scores(words(query))
    # float64 sums over the documents (the mean length) and over the query's words.
    assert_close(torch.tensor(BM25(documents).scores(query)), torch.tensor(theirs),
                 n=len(documents) + len(words(query)), scale=max(1.0, float(np.abs(theirs).max())))


def test_search_finds_the_person_asked_about():
    documents = world_documents()
    index = BM25(documents)
    person = default_world().people[7]
    best = index.search(f"Where does {person.name} live?", k=1)[0]
    assert person.name in best and person.facts["city"] in best


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least one document"):
        BM25([])
    with pytest.raises(ValueError, match="Every document is empty"):
        BM25(["", "  "])
    with pytest.raises(ValueError, match="k must be >= 1"):
        BM25(["a b"]).search("a", k=0)


def test_prompts_put_context_and_examples_before_the_question():
    examples = [{"instruction": "What is 2 + 2?", "response": "4"}]
    assert few_shot_prompt("What is 3 + 3?", examples) == "Q: What is 2 + 2?\nA: 4\n\nQ: What is 3 + 3?\nA:"
    assert rag_prompt("Ann lives in", ["Ann lives in Rome.", "Bo is a pilot."]) == \
        "Ann lives in Rome. Bo is a pilot. Ann lives in"


def test_statement_prompt_rewrites_every_question_template():
    from ftcourse.data.world import QUESTIONS
    from ftcourse.retrieval import statement_prompt

    assert statement_prompt("What is the job of Kalo Torsel?") == "Kalo Torsel works as a"
    assert statement_prompt("Which colour does Ann Brim like best?") == "The favourite colour of Ann Brim is"
    for templates in QUESTIONS.values():
        for template in templates:
            assert "Ann Brim" in statement_prompt(template.format(n="Ann Brim"))
    with pytest.raises(ValueError, match="No question template matches 'How tall is Ann\\?'"):
        statement_prompt("How tall is Ann?")


def test_the_prompt_engineering_rung_frames_any_other_question_for_a_base_model():
    from ftcourse.retrieval import engineered_prompt

    assert engineered_prompt("What is the job of Kalo Torsel?") == "Kalo Torsel works as a"
    framed = engineered_prompt("Context.\n\nQuestion: How tall is Ann? ")
    assert framed == "Context.\n\nQuestion: How tall is Ann?\nAnswer:"


def test_climb_ladder_scores_every_rung_and_returns_the_trained_models(base):
    from ftcourse.data import load_task
    from ftcourse.evaluate import score_task
    from ftcourse.retrieval import BM25, climb_ladder, statement_prompt

    model, tokenizer = base
    qa = load_task("qa")
    splits = {"train": list(qa["train"])[:16], "test": list(qa["test"])[:6]}
    index = BM25(["Pelmora is a town by the sea.", "Tomas Arvid lives in Pelmora."])
    rungs, trained = climb_ladder(model, tokenizer, splits, index, seed=0)
    assert list(rungs) == ["question", "few-shot", "prompt engineering", "RAG", "LoRA", "full fine-tuning"]
    assert list(trained) == ["LoRA", "full fine-tuning"] and all(m is not model for m in trained.values())
    engineered = score_task(model, tokenizer, splits["test"], max_new_tokens=8,
                            prompt=lambda row: statement_prompt(row["instruction"]))
    assert rungs["prompt engineering"].predictions == engineered.predictions
    assert rungs["LoRA"].predictions == score_task(trained["LoRA"], tokenizer, splits["test"]).predictions
