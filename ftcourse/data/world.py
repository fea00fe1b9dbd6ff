"""The synthetic world: invented people, the facts about them, and the sentences that state them.

The tiny profile pretrains and fine-tunes on text generated here from a seed, so every chapter runs
offline and every effect can be traced back to the facts that caused it. Each fact is stated in
several phrasings: a model that saw a fact in one wording only memorises it but cannot answer
questions about it later (Allen-Zhu & Li, "Physics of Language Models 3.1", arXiv:2309.14316).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

# Every person has one value of each attribute. Jobs and pets start with a consonant ("a baker").
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "city": ("Pelmora", "Quistar", "Drovenhal", "Axbury", "Lunett", "Korvanis",
             "Tessaly", "Brimholt", "Varnok", "Zellin", "Mirefield", "Castova"),
    "job": ("baker", "pilot", "farmer", "doctor", "teacher", "painter",
            "sailor", "tailor", "miner", "singer", "weaver", "potter"),
    "pet": ("cat", "dog", "hen", "fox", "rabbit", "parrot",
            "turtle", "goat", "horse", "snake", "frog", "mouse"),
    "colour": ("red", "blue", "green", "yellow", "purple", "orange",
               "black", "white", "pink", "brown", "grey", "gold"),
}

# Statement templates: {n} is the person's name, {v} the value. The value comes last in all but
# the final phrasing, so "<prefix> {v}" probes recall in pretraining phrasing.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "city": ("{n} lives in {v}.", "{n} has a home in {v}.", "{n} resides in the city of {v}.",
             "The home town of {n} is {v}.", "In {v} lives {n}."),
    "job": ("{n} works as a {v}.", "{n} is a {v} by trade.", "The job of {n} is {v}.",
            "By profession, {n} is a {v}.", "A {v} by trade is {n}."),
    "pet": ("{n} has a pet {v}.", "{n} keeps a {v} as a pet.", "The pet of {n} is a {v}.",
            "At home, {n} looks after a pet {v}.", "A pet {v} belongs to {n}."),
    "colour": ("{n} likes the colour {v} best.", "The favourite colour of {n} is {v}.",
               "{n} says the best colour is {v}.", "Of all colours, {n} prefers {v}.",
               "The colour {v} is the favourite of {n}."),
}

# Question templates for the instruction tasks: the answer is the bare value.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "city": ("Where does {n} live?", "In which city does {n} live?",
             "What is the home town of {n}?", "Which city is home to {n}?"),
    "job": ("What is the job of {n}?", "What does {n} do for a living?",
            "What is the profession of {n}?", "What work does {n} do?"),
    "pet": ("What pet does {n} have?", "Which animal does {n} keep as a pet?",
            "What kind of pet does {n} own?", "What animal lives with {n} as a pet?"),
    "colour": ("What is the favourite colour of {n}?", "Which colour does {n} like best?",
               "What colour does {n} prefer?", "What is the best colour according to {n}?"),
}

_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "dra", "bel", "ny", "qua", "zen",
              "fi", "gor", "ha", "ju", "pel", "os", "ri", "tam")


@dataclass(frozen=True)
class Person:
    """An invented person and one value per attribute, e.g. facts["city"] == "Pelmora"."""

    name: str
    facts: dict[str, str]


@dataclass(frozen=True)
class World:
    """The people the base model learns about in pretraining, and newcomers it never sees."""

    seed: int
    people: tuple[Person, ...]
    newcomers: tuple[Person, ...]

    def facts(self, who: str = "people") -> list[tuple[Person, str]]:
        """Every (person, attribute) pair of `people` or `newcomers`, in a fixed order."""
        group = {"people": self.people, "newcomers": self.newcomers}[who]
        return [(person, attribute) for person in group for attribute in ATTRIBUTES]


@cache
def first_names() -> tuple[str, ...]:
    """Every first name the world can invent: two different syllables ("kalo")."""
    return tuple(a + b for a in _SYLLABLES for b in _SYLLABLES if a != b)


@cache
def last_names() -> tuple[str, ...]:
    """Every last name the world can invent: two syllables and an ending ("torsel" + "n")."""
    return tuple(a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("n", "k", "th", "s"))


def invent_person(first: str, last: str, rng: random.Random) -> Person:
    """A person named "First Last" with a random value of every attribute."""
    return Person(name=f"{first.capitalize()} {last.capitalize()}",
                  facts={attribute: rng.choice(values) for attribute, values in ATTRIBUTES.items()})


def make_world(num_people: int = 64, num_newcomers: int = 24, seed: int = 0) -> World:
    """Invent `num_people + num_newcomers` people with distinct first and last names."""
    if num_people < 1 or num_newcomers < 0:
        raise ValueError(f"make_world needs num_people >= 1 and num_newcomers >= 0, "
                         f"got {num_people} and {num_newcomers}.")
    rng = random.Random(seed)
    firsts, lasts = first_names(), last_names()
    total = num_people + num_newcomers
    if total > len(firsts):
        raise ValueError(f"make_world can invent at most {len(firsts)} people, asked for {total}.")
    chosen_firsts, chosen_lasts = rng.sample(firsts, total), rng.sample(lasts, total)
    group = [invent_person(first, last, rng) for first, last in zip(chosen_firsts, chosen_lasts)]
    return World(seed=seed, people=tuple(group[:num_people]), newcomers=tuple(group[num_people:]))


def statement(person: Person, attribute: str, phrasing: int) -> str:
    """One sentence stating a fact, in phrasing number `phrasing` of that attribute."""
    template = STATEMENTS[attribute][phrasing]
    return template.format(n=person.name, v=person.facts[attribute])


def question(person: Person, attribute: str, phrasing: int) -> str:
    """A question whose exact answer is `person.facts[attribute]`."""
    return QUESTIONS[attribute][phrasing].format(n=person.name)


def biography(person: Person, rng: random.Random) -> str:
    """All facts about one person, in random order and random phrasings."""
    attributes = list(ATTRIBUTES)
    rng.shuffle(attributes)
    return " ".join(statement(person, a, rng.randrange(len(STATEMENTS[a]))) for a in attributes)


def recall_probes(world: World, who: str = "people") -> list[tuple[str, str]]:
    """(prefix, value) pairs in the first pretraining phrasing: "Kalo Torsel lives in" -> "Pelmora"."""
    probes = []
    for person, attribute in world.facts(who):
        prefix = STATEMENTS[attribute][0].split("{v}")[0].format(n=person.name).rstrip()
        probes.append((prefix, person.facts[attribute]))
    return probes
