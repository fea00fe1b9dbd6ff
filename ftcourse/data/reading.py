"""Reading: documents that teach a base model to look facts up in its context, and probes that measure it.

A model reads its context when it answers about someone it has never seen from a passage in front
of it. Prompting with examples and retrieval-augmented generation both depend on that skill, which
real models pick up from web text and a tiny model only from documents that reward it (Olsson et
al. 2022, "In-context Learning and Induction Heads", arXiv:2209.11895). The people here are
strangers: names from the world's syllables that belong to no one in the world, with facts drawn
afresh in every document, so memorising pays nothing and only reading helps. A fifth of the free
first names is held out of pretraining for the probes.
"""

from __future__ import annotations

import random

from ftcourse.data.world import (
    ATTRIBUTES,
    QUESTIONS,
    STATEMENTS,
    Person,
    World,
    first_names,
    invent_person,
    last_names,
    question,
    statement,
)

NOTES_HEADERS = ("Notes:", "Passage:", "From the town records:", "Background:", "")
RECALL_HEADERS = ("Recall:", "So:", "In short:", "Remember:", "")
HELD_OUT_EVERY = 5          # every fifth free first name is kept for the probes
QUESTION_SHARE = 0.35       # reading documents whose follow-up is question/answer pairs


def stranger_first_names(world: World, split: str) -> list[str]:
    """First names of no one in `world` (its people and newcomers), for pretraining ("train")
    or for the probes ("held-out"); the two lists never share a name."""
    if split not in ("train", "held-out"):
        raise ValueError(f"split must be 'train' or 'held-out', got {split!r}.")
    taken = {person.name.split()[0].lower() for person in (*world.people, *world.newcomers)}
    free = [name for name in first_names() if name not in taken]
    held_out = [i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 for i in range(len(free))]
    return [name for name, kept in zip(free, held_out) if kept == (split == "held-out")]


def strangers(names: list[str], count: int, rng: random.Random) -> list[Person]:
    """`count` strangers with different first names from `names` (one of `stranger_first_names`'
    lists), random last names and random facts."""
    return [invent_person(first, rng.choice(last_names()), rng) for first in rng.sample(names, count)]


def sentence_start(person: Person, attribute: str, rng: random.Random) -> str:
    """A statement of the fact cut before its value ("The pet of X is a"), in a random phrasing
    that ends with the value: the model completes it by finding the value."""
    endings = [t for t in STATEMENTS[attribute] if t.endswith("{v}.")]
    return rng.choice(endings).split("{v}")[0].format(n=person.name).rstrip()


def _passage(facts: list[tuple[Person, str]], rng: random.Random) -> str:
    return " ".join(statement(person, attribute, rng.randrange(len(STATEMENTS[attribute])))
                    for person, attribute in facts)


def reading_document(names: list[str], rng: random.Random) -> str:
    """Notes about one to four strangers (first names from `names`: the "train" list of
    `stranger_first_names`), then some of their facts asked again: as statements after a recall
    header, or as question/answer pairs in the few-shot layout ("Q: ...\\nA: ...")."""
    people = strangers(names, rng.randint(1, 4), rng)
    known = [(person, attribute) for person in people for attribute in ATTRIBUTES]
    facts = rng.sample(known, rng.randint(2, min(5, len(known))))
    notes = " ".join(filter(None, [rng.choice(NOTES_HEADERS), _passage(facts, rng)]))
    asked = rng.sample(facts, rng.randint(1, min(3, len(facts))))
    if rng.random() < QUESTION_SHARE:
        answers = [f"Q: {question(p, a, rng.randrange(len(QUESTIONS[a])))}\nA: {p.facts[a]}"
                   for p, a in asked]
        return notes + "\n\n" + "\n\n".join(answers)
    recalled = " ".join(f"{sentence_start(p, a, rng)} {p.facts[a]}." for p, a in asked)
    return " ".join(filter(None, [notes, rng.choice(RECALL_HEADERS), recalled]))


def reading_probes(world: World, num_probes: int = 200, seed: int = 0,
                   passage: bool = True) -> list[tuple[str, str]]:
    """(prompt, value) pairs about held-out strangers: "Notes:" with three facts about three of
    them, then "Recall:" and the start of a sentence about one. With `passage=False` the fact
    asked about is swapped for one about a fourth stranger, so the answer is nowhere in the
    notes (and the same draws are made either way: the two lists are paired item by item)."""
    rng, names = random.Random(seed), stranger_first_names(world, "held-out")
    probes = []
    for _ in range(num_probes):
        *people, absent = strangers(names, 4, rng)
        facts = [(person, rng.choice(list(ATTRIBUTES))) for person in people]
        target = rng.randrange(len(facts))
        person, attribute = facts[target]
        elsewhere = (absent, rng.choice(list(ATTRIBUTES)))
        if not passage:
            facts[target] = elsewhere
        probes.append((f"Notes: {_passage(facts, rng)} Recall: {sentence_start(person, attribute, rng)}",
                       person.facts[attribute]))
    return probes


def chance_level() -> float:
    """The exact-match rate of guessing a value uniformly within its attribute (1/12 here)."""
    return sum(1 / len(values) for values in ATTRIBUTES.values()) / len(ATTRIBUTES)
