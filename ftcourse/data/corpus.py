"""The pretraining corpus: plain text about the world, with no instructions and no chat turns.

Most documents state the people's facts (one person's biography, or facts about several people
at once); a fifth are reading exercises (notes about strangers, then their facts asked again:
`ftcourse.data.reading`); the rest are arithmetic, customer messages with the rule for routing
them, word lists and simple sentences. A base model trained on it continues text, recalls facts
and looks facts up in its context, but has never seen an instruction or a chat turn: following
instructions is what fine-tuning adds.
"""

from __future__ import annotations

import random

from ftcourse.data.reading import reading_document, stranger_first_names
from ftcourse.data.tasks import ARITHMETIC_STATEMENTS, WORDS, arithmetic_facts, routing_cores, routing_message
from ftcourse.data.world import ATTRIBUTES, STATEMENTS, World, biography, statement

# Share of each kind of document in the corpus.
MIX = {"biography": 0.45, "facts": 0.12, "reading": 0.20, "arithmetic": 0.10, "routing": 0.07,
       "words": 0.06}


def _facts_document(world: World, rng: random.Random) -> str:
    """Three to five facts about different people: facts must not lean on their neighbours."""
    people = rng.sample(world.people, min(len(world.people), rng.randint(3, 5)))
    return " ".join(statement(p, a, rng.randrange(len(STATEMENTS[a])))
                    for p in people for a in [rng.choice(list(ATTRIBUTES))])


def _arithmetic_document(rng: random.Random) -> str:
    facts = rng.sample(arithmetic_facts(), rng.randint(3, 6))
    return " ".join(rng.choice(ARITHMETIC_STATEMENTS[op]).format(a=a, b=b, c=c) for a, op, b, c in facts)


def _routing_document(cores: list[tuple[str, str, str]], rng: random.Random) -> str:
    """A message from a training core with its routing rule (test messages stay unseen)."""
    label, subject, problem = rng.choice(cores)
    message = routing_message(subject, problem, rng)
    return f"A customer wrote: {message} Messages about {subject} go to the {label} team."


def _words_document(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "Words: " + ", ".join(rng.sample(WORDS, rng.randint(3, 6))) + "."
    colour, pet, job = (rng.choice(ATTRIBUTES[a]) for a in ("colour", "pet", "job"))
    return f"The {job} saw a {colour} {pet} near the {rng.choice(WORDS)}."


def pretraining_documents(world: World, num_documents: int, seed: int) -> list[str]:
    """`num_documents` documents drawn from `MIX` with `seed`: the same seed, the same corpus."""
    rng = random.Random(seed)
    train_cores = routing_cores(world.seed)["train"]
    stranger_names = stranger_first_names(world, "train")
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=num_documents)
    make = {"biography": lambda: biography(rng.choice(world.people), rng),
            "facts": lambda: _facts_document(world, rng),
            "reading": lambda: reading_document(stranger_names, rng),
            "arithmetic": lambda: _arithmetic_document(rng),
            "routing": lambda: _routing_document(train_cores, rng),
            "words": lambda: _words_document(rng)}
    return [make[kind]() for kind in kinds]
