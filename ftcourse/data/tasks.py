"""Fine-tuning tasks generated from the synthetic world, split into train / validation / test.

Every split is a partition of a set of unique keys (a fact, a sum, a word list, a message core),
so no test item can appear in training: the disjointness holds by construction and is tested.
Tasks: world questions, arithmetic, word-list reversal, descriptions (instructions); message
routing (classification); preference pairs; and facts about newcomers the base model never saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from ftcourse.data.world import ATTRIBUTES, QUESTIONS, STATEMENTS, Person, World, question, statement

Item = TypeVar("Item")
SPLITS = ("train", "validation", "test")

TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "instructions": ("instruction", "response", "task"),
    "qa": ("instruction", "response", "task"),
    "arithmetic": ("instruction", "response", "task"),
    "reverse": ("instruction", "response", "task"),
    "describe": ("instruction", "response", "task"),
    "routing": ("text", "label", "instruction", "response"),
    "preferences": ("prompt", "chosen", "rejected", "kind"),
    "newfacts": ("instruction", "response", "task"),
}
# The field that holds what the model is asked: no value of it may appear in two splits.
PROMPT_FIELD = {name: "prompt" if "prompt" in fields else "instruction"
                for name, fields in TASK_FIELDS.items()}
FRACTIONS = (0.6, 0.1, 0.3)


def split_keys(keys: Sequence[Item], seed: int) -> dict[str, list[Item]]:
    """Shuffle unique keys with `seed` and cut them 60/10/30 into train, validation and test."""
    if len(set(keys)) != len(keys):
        raise ValueError("split_keys needs unique keys; duplicates would leak across splits.")
    shuffled = list(keys)
    random.Random(seed).shuffle(shuffled)
    n_train = round(FRACTIONS[0] * len(shuffled))
    n_val = round(FRACTIONS[1] * len(shuffled))
    return {"train": shuffled[:n_train], "validation": shuffled[n_train:n_train + n_val],
            "test": shuffled[n_train + n_val:]}


# ---------------------------------------------------------------- world questions and descriptions

def _asked_facts(world: World, seed: int) -> dict[str, list[tuple[Person, str, str]]]:
    """(person, attribute, question) per split; each fact of `world.people` is in one split."""
    rng = random.Random(seed)
    people = {person.name: person for person in world.people}
    keys = [(person.name, attribute) for person, attribute in world.facts("people")]
    return {split: [(people[name], attribute,
                     question(people[name], attribute, rng.randrange(len(QUESTIONS[attribute]))))
                    for name, attribute in part]
            for split, part in split_keys(keys, seed).items()}


def fact_questions(world: World, seed: int) -> dict[str, list[dict]]:
    """Questions about facts stated in pretraining; each fact is asked in one split only."""
    return {split: [{"instruction": text, "response": person.facts[attribute], "task": "qa"}
                    for person, attribute, text in asked]
            for split, asked in _asked_facts(world, seed).items()}


def description(person: Person) -> str:
    """Every fact about a person in the first phrasing and a fixed order: the describe target."""
    return " ".join(statement(person, attribute, 0) for attribute in ATTRIBUTES)


def describe_requests(world: World, seed: int) -> dict[str, list[dict]]:
    """"Tell me about X." answered with all of X's facts: a longer generation task."""
    people = {person.name: person for person in world.people}
    return {split: [{"instruction": f"Tell me about {name}.",
                     "response": description(people[name]), "task": "describe"}
                    for name in part]
            for split, part in split_keys(list(people), seed + 1).items()}


# ---------------------------------------------------------------- arithmetic

ARITHMETIC_STATEMENTS = {
    "+": ("{a} plus {b} is {c}.", "{a} + {b} = {c}.", "Adding {a} and {b} gives {c}."),
    "-": ("{a} minus {b} is {c}.", "{a} - {b} = {c}.", "Taking {b} from {a} leaves {c}."),
}
ARITHMETIC_QUESTIONS = {
    "+": ("What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}."),
    "-": ("What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}."),
}


def arithmetic_facts() -> list[tuple[int, str, int, int]]:
    """Every single-digit sum, and every single-digit difference that is not negative."""
    sums = [(a, "+", b, a + b) for a in range(10) for b in range(10)]
    differences = [(a, "-", b, a - b) for a in range(10) for b in range(a + 1)]
    return sums + differences


def arithmetic_questions(seed: int) -> dict[str, list[dict]]:
    """Arithmetic questions: each (a, op, b) is asked in one split only."""
    rng = random.Random(seed)
    return {split: [{"instruction": rng.choice(ARITHMETIC_QUESTIONS[op]).format(a=a, b=b),
                     "response": str(c), "task": "arithmetic"} for a, op, b, c in part]
            for split, part in split_keys(arithmetic_facts(), seed + 2).items()}


# ---------------------------------------------------------------- word lists

WORDS = tuple(sorted({value.lower() for values in ATTRIBUTES.values() for value in values}
                     | {"tree", "river", "stone", "cloud", "bread", "apple", "lamp", "boat"}))


def word_lists(count: int, length: int, seed: int) -> list[tuple[str, ...]]:
    """`count` distinct lists of `length` distinct words."""
    rng = random.Random(seed)
    lists: dict[tuple[str, ...], None] = {}
    while len(lists) < count:
        lists[tuple(rng.sample(WORDS, length))] = None
    return list(lists)


def reversal_requests(seed: int, count: int = 300) -> dict[str, list[dict]]:
    """"Reverse the order of the words: a, b, c" -> "c, b, a": a procedure, not knowledge."""
    return {split: [{"instruction": "Reverse the order of the words: " + ", ".join(words),
                     "response": ", ".join(reversed(words)), "task": "reverse"} for words in part]
            for split, part in split_keys(word_lists(count, 3, seed + 3), seed + 3).items()}


# ---------------------------------------------------------------- message routing (classification)

ROUTES: dict[str, tuple[str, ...]] = {
    "billing": ("my invoice", "the refund", "my last payment", "the charge on my card",
                "my receipt", "the monthly fee", "my bill"),
    "shipping": ("my parcel", "the delivery", "the courier", "my package",
                 "the tracking number", "the box you sent", "the shipment"),
    "technical": ("the app", "the website", "the search button", "the screen",
                  "the latest update", "the printer driver", "the download link"),
    "account": ("my password", "my username", "my email address", "my profile",
                "the sign in code", "my account page", "my membership"),
}
PROBLEMS = ("is wrong", "does not work", "has a problem", "is missing", "changed without notice",
            "needs to be fixed", "is not right")
OPENERS = ("Hello,", "Hi there,", "Good morning,", "Please help:", "Dear team,")
CLOSERS = ("Thanks.", "Can you help?", "This is urgent.", "Please reply soon.")
ROUTING_INSTRUCTION = ("Which team should handle this message? Answer billing, shipping, technical "
                       "or account.\nMessage: {text}")


def routing_message(subject: str, problem: str, rng: random.Random) -> str:
    """One customer message around a (subject, problem) core."""
    return f"{rng.choice(OPENERS)} {subject} {problem}. {rng.choice(CLOSERS)}"


def routing_cores(seed: int) -> dict[str, list[tuple[str, str, str]]]:
    """(label, subject, problem) cores split 60/10/30; pretraining uses train cores only."""
    cores = [(label, subject, problem) for label, subjects in ROUTES.items()
             for subject in subjects for problem in PROBLEMS]
    return split_keys(cores, seed + 4)


def routing_requests(seed: int, variants: int = 3) -> dict[str, list[dict]]:
    """Messages to route to one of four teams; a (subject, problem) core is in one split only."""
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {}
    for split, part in routing_cores(seed).items():
        texts = {(routing_message(subject, problem, rng), label)
                 for label, subject, problem in part for _ in range(variants)}
        rows[split] = [{"text": text, "label": label,
                        "instruction": ROUTING_INSTRUCTION.format(text=text), "response": label}
                       for text, label in sorted(texts)]
    return rows


# ---------------------------------------------------------------- preferences

UNHELPFUL = ("I do not know.", "That is a good question.", "I would rather not say.",
             "Please ask someone else.")
REJECTED_KINDS = ("terse", "wrong_fact", "unhelpful")


def preference_pairs(world: World, seed: int) -> dict[str, list[dict]]:
    """(prompt, chosen, rejected, kind): the chosen answer states the true fact in a full sentence
    ("Quadra Kapels lives in Pelmora."); the rejected one is, in equal shares, the bare value
    ("terse": right but curt, the style an SFT model learns), the sentence with a wrong value
    ("wrong_fact"), or an evasion ("unhelpful"). Each question is in the same split as in
    `fact_questions`, so the splits of all tasks about the world agree."""
    rng = random.Random(seed + 5)
    pairs: dict[str, list[dict]] = {}
    for split, asked in _asked_facts(world, seed).items():
        pairs[split] = []
        for person, attribute, text in asked:
            kind = rng.choice(REJECTED_KINDS)
            if kind == "terse":
                rejected = person.facts[attribute]
            elif kind == "wrong_fact":
                wrong = rng.choice([v for v in ATTRIBUTES[attribute] if v != person.facts[attribute]])
                rejected = statement(Person(person.name, {**person.facts, attribute: wrong}), attribute, 0)
            else:
                rejected = rng.choice(UNHELPFUL)
            pairs[split].append({"prompt": text, "chosen": statement(person, attribute, 0),
                                 "rejected": rejected, "kind": kind})
    return pairs


# ---------------------------------------------------------------- new facts (knowledge injection)

def newcomer_facts(world: World) -> dict[str, list[dict]]:
    """Questions about newcomers, who are absent from pretraining. Each fact is asked in two
    phrasings in train, a third in validation and a fourth in test: the test questions are new
    wordings of facts learned in training, never seen verbatim."""
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for index, (person, attribute) in enumerate(world.facts("newcomers")):
        order = [(index + k) % len(QUESTIONS[attribute]) for k in range(4)]
        for split, phrasings in zip(SPLITS, (order[:2], order[2:3], order[3:])):
            rows[split] += [{"instruction": question(person, attribute, p),
                             "response": person.facts[attribute], "task": "newfact"}
                            for p in phrasings]
    return rows


def newcomer_statements(world: World) -> list[str]:
    """Every fact about the newcomers in every phrasing: documents for knowledge injection."""
    return [statement(person, attribute, p) for person, attribute in world.facts("newcomers")
            for p in range(len(STATEMENTS[attribute]))]


# ---------------------------------------------------------------- multiple choice

def as_multiple_choice(rows: Sequence[dict], n_choices: int = 4, seed: int = 0) -> list[dict]:
    """Question rows as multiple choice: `context` ("Question: ...\\nAnswer:"), `choices` (the
    answer and n_choices - 1 others of the same kind, shuffled) and `answer`, the right index.

    Wrong choices come from the world's values of the answer's attribute (other cities for a
    city), or for answers outside the world from the other rows' answers.
    """
    if n_choices < 2:
        raise ValueError(f"n_choices must be >= 2 (one right answer and a wrong one), got {n_choices}.")
    rng = random.Random(seed)
    answers = sorted({row["response"] for row in rows})
    kinds = {value: values for values in ATTRIBUTES.values() for value in values}
    items = []
    for row in rows:
        pool = [value for value in kinds.get(row["response"], answers) if value != row["response"]]
        if len(pool) < n_choices - 1:
            raise ValueError(f"Only {len(pool)} other answer(s) of the kind of {row['response']!r} exist, "
                             f"too few for {n_choices} choices; lower n_choices or give more rows.")
        choices = rng.sample(pool, n_choices - 1) + [row["response"]]
        rng.shuffle(choices)
        items.append({"context": f"Question: {row['instruction']}\nAnswer:", "choices": choices,
                      "answer": choices.index(row["response"])})
    return items
