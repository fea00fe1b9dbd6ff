import json
import random
import re

import pytest

from ftcourse.data import TASK_FIELDS, default_world, load_task, require_fields, synthetic_rows
from ftcourse.data.corpus import pretraining_documents
from ftcourse.data.reading import chance_level, reading_document, reading_probes, stranger_first_names
from ftcourse.data.tasks import newcomer_statements, split_keys
from ftcourse.data.world import ATTRIBUTES, STATEMENTS, make_world, recall_probes

KEY_FIELD = {"routing": "text", "preferences": "prompt"}


@pytest.mark.parametrize("task", list(TASK_FIELDS))
def test_splits_are_disjoint(task):
    rows = synthetic_rows(task)
    key = KEY_FIELD.get(task, "instruction")
    seen = {split: {row[key] for row in rows[split]} for split in rows}
    assert all(len(seen[split]) > 0 for split in ("train", "validation", "test"))
    assert not seen["train"] & seen["test"], "a test item appears in training"
    assert not seen["train"] & seen["validation"]
    assert not seen["validation"] & seen["test"]


def test_fact_questions_ask_each_fact_in_one_split_only():
    rows = synthetic_rows("qa")
    world = default_world()
    asked = {}
    for split, items in rows.items():
        for row in items:
            person = next(p for p in world.people if p.name in row["instruction"])
            attribute = next(a for a, v in ATTRIBUTES.items() if row["response"] in v)
            asked.setdefault((person.name, attribute), set()).add(split)
    assert len(asked) == len(world.people) * len(ATTRIBUTES)
    assert all(len(splits) == 1 for splits in asked.values())


def test_preference_pairs_follow_the_question_splits():
    questions = synthetic_rows("qa")
    pairs = synthetic_rows("preferences")
    for split in questions:
        assert [r["instruction"] for r in questions[split]] == [p["prompt"] for p in pairs[split]]
        assert all(p["chosen"].endswith(q["response"] + ".") or q["response"] in p["chosen"]
                   for p, q in zip(pairs[split], questions[split]))
        assert all(p["chosen"] != p["rejected"] for p in pairs[split])
    kinds = [p["kind"] for split in pairs.values() for p in split]
    assert {kinds.count(k) / len(kinds) > 0.25 for k in ("terse", "wrong_fact", "unhelpful")} == {True}


def test_newcomers_are_absent_from_pretraining():
    world = default_world()
    corpus = " ".join(pretraining_documents(world, 5000, seed=0))
    assert all(p.name not in corpus for p in world.newcomers)
    assert sum(p.name in corpus for p in world.people) == len(world.people)
    assert len(newcomer_statements(world)) == len(world.newcomers) * sum(len(s) for s in STATEMENTS.values())


def test_routing_test_messages_are_absent_from_pretraining():
    corpus = " ".join(pretraining_documents(default_world(), 5000, seed=0))
    test_messages = [row["text"] for row in synthetic_rows("routing")["test"]]
    assert not [m for m in test_messages if m in corpus]


def test_generators_are_deterministic_and_seeded():
    assert make_world(8, 2, seed=1) == make_world(8, 2, seed=1)
    assert make_world(8, 2, seed=1) != make_world(8, 2, seed=2)
    world = make_world(8, 2, seed=1)
    assert pretraining_documents(world, 50, seed=3) == pretraining_documents(world, 50, seed=3)
    assert pretraining_documents(world, 50, seed=3) != pretraining_documents(world, 50, seed=4)


def test_world_names_are_unique():
    world = make_world(200, 50, seed=0)
    names = [p.name for p in world.people + world.newcomers]
    assert len(set(names)) == len(names)
    assert len({n.split()[0] for n in names}) == len(names)


def test_recall_probes_are_prefixes_of_statements():
    world = make_world(4, 0, seed=0)
    for (prefix, value), (person, attribute) in zip(recall_probes(world), world.facts()):
        assert STATEMENTS[attribute][0].format(n=person.name, v=value).startswith(prefix + " " + value)


def test_split_keys_partitions_and_rejects_duplicates():
    parts = split_keys(list(range(100)), seed=0)
    assert sorted(parts["train"] + parts["validation"] + parts["test"]) == list(range(100))
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [60, 10, 30]
    with pytest.raises(ValueError, match="unique keys"):
        split_keys([1, 1, 2], seed=0)


def test_load_task_returns_datasets_with_the_task_fields():
    data = load_task("routing")
    assert set(data) == {"train", "validation", "test"}
    assert set(TASK_FIELDS["routing"]) <= set(data["train"].column_names)
    assert set(data["train"]["label"]) == {"billing", "shipping", "technical", "account"}


def test_load_task_rejects_unknown_task_and_profile():
    with pytest.raises(ValueError, match="Unknown task 'poetry'; known tasks: instructions"):
        load_task("poetry")
    with pytest.raises(ValueError, match="Unknown profile 'huge'; known profiles: tiny, gpu"):
        load_task("qa", profile="huge")


def test_require_fields_names_the_missing_field_and_row():
    rows = [{"instruction": "a", "response": "b"}, {"instruction": "c", "answer": "d"}]
    message = r"row 1 has no field 'response' \(its fields: \['answer', 'instruction'\]\)"
    with pytest.raises(ValueError, match=message):
        require_fields(rows, ("instruction", "response"))


def test_require_fields_on_a_dataset_names_the_missing_column():
    import datasets

    ds = datasets.Dataset.from_list([{"instruction": "a", "output": "b"}])
    with pytest.raises(ValueError, match=r"no field 'response'.*row 0.*rename_column"):
        require_fields(ds, ("instruction", "response"))


def test_require_fields_reports_empty_and_wrong_types_all_at_once():
    rows = [{"instruction": "", "response": "b"}, {"instruction": "c", "response": 3}]
    with pytest.raises(ValueError, match=r"2 problem\(s\): row 0: field 'instruction' is empty; "
                                         r"row 1: field 'response' must be a string, got int 3"):
        require_fields(rows, ("instruction", "response"))
    with pytest.raises(ValueError, match="is empty"):
        require_fields([], ("instruction",))


def test_read_rows_reads_jsonl_and_json_alike(tmp_path):
    import json

    from ftcourse.data import read_rows

    rows = [{"instruction": "Say hi", "response": "hi"}, {"instruction": "2 + 2?", "response": "4"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=1))
    assert read_rows(tmp_path / "d.jsonl", ("instruction", "response")) == rows
    assert read_rows(tmp_path / "d.json", ("instruction", "response")) == rows


def test_split_rows_keeps_repeated_prompts_in_one_split():
    from ftcourse.data import require_disjoint, split_rows

    rows = [{"instruction": f"q{i % 40}", "response": str(i)} for i in range(100)]
    splits = split_rows(rows, "instruction", seed=3)
    require_disjoint(splits, "instruction")           # raises if a prompt is in two splits
    assert sorted(r["response"] for s in splits.values() for r in s) == sorted(r["response"] for r in rows)
    prompts = [{r["instruction"] for r in splits[s]} for s in ("train", "validation", "test")]
    assert [len(p) for p in prompts] == [24, 4, 12]
    assert split_rows(rows, "instruction", seed=3) == splits


def test_drop_duplicates_keeps_the_first_of_each_prompt():
    from ftcourse.data.checks import drop_duplicates

    rows = [{"instruction": q} for q in ("a", "b", "a", "c", "b")]
    with pytest.warns(UserWarning, match="2 time"):
        assert drop_duplicates(rows, "instruction") == [0, 1, 3]


def test_hub_data_are_mapped_deduplicated_and_split_disjointly(monkeypatch):
    import datasets

    from ftcourse.data import require_disjoint
    from ftcourse.data.hub import load_hub_task

    raw = [{"instruction": f"Task {i % 50}", "input": "", "output": f"answer {i}"} for i in range(80)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(raw))
    with pytest.warns(UserWarning, match="repeats the instruction of an earlier row 30 time"):
        splits = load_hub_task("instructions")
    assert sum(len(s) for s in splits.values()) == 50
    assert set(splits["train"].column_names) == {"instruction", "response", "task"}
    require_disjoint({name: list(rows) for name, rows in splits.items()}, "instruction")


def test_a_local_copy_reads_as_the_hub_does(monkeypatch, tmp_path):
    """`ftcourse download` writes each dataset's rows with the hub's columns; read back from
    FTCOURSE_DATA_DIR they give the same splits as the hub, through the same mapping."""
    import datasets
    from hub_fixture import hub_rows

    from ftcourse.cli import main
    from ftcourse.data.hub import HUB_TASKS, load_hub_task, local_file, split_sizes

    rows = hub_rows()               # each dataset's own columns
    raw = {task.repo: datasets.Dataset.from_list(rows[local_file(task, ".").stem])
           for task in HUB_TASKS.values()}
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, *args, **kwargs: raw[repo])
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda *args, **kwargs: None)
    assert main(["download", "--profile", "gpu", "--to", str(tmp_path)]) == 0
    monkeypatch.undo()
    for name in HUB_TASKS:
        with monkeypatch.context() as hub:
            hub.setattr(datasets, "load_dataset", lambda repo, *args, **kwargs: raw[repo])
            from_hub = load_hub_task(name)
        local = load_hub_task(name, tmp_path / "data")
        assert {split: list(rows) for split, rows in local.items()} == \
            {split: list(rows) for split, rows in from_hub.items()}, name
        # count_rows predicts the splits from a dataset's size alone (the fixture has no duplicates)
        assert {split: len(rows) for split, rows in local.items()} == split_sizes(len(rows[local_file(
            HUB_TASKS[name], ".").stem])), name


def test_the_hub_fixture_has_exactly_each_hub_datasets_columns():
    from hub_fixture import hub_rows

    from ftcourse.data.hub import HUB_TASKS, local_file

    rows = hub_rows()
    for task in HUB_TASKS.values():
        name = local_file(task, ".").stem
        assert {tuple(sorted(row)) for row in rows[name]} == {tuple(sorted(task.columns))}, name


def test_a_missing_local_copy_says_how_to_make_it(tmp_path):
    from ftcourse.data.hub import load_hub_task

    with pytest.raises(FileNotFoundError, match=r"yahma--alpaca-cleaned.jsonl is missing.*ftcourse download"):
        load_hub_task("instructions", tmp_path)


def test_local_overrides_adapt_a_profile(monkeypatch):
    from ftcourse.profiles import get_profile

    monkeypatch.setenv("FTCOURSE_MODEL", "/models/smollm2")
    monkeypatch.setenv("FTCOURSE_DATA_DIR", "/data/hub")
    monkeypatch.setenv("FTCOURSE_DTYPE", "float32")
    profile = get_profile("gpu")
    expected = ("/models/smollm2", "/data/hub", "float32")
    assert (profile.base_model, profile.data_dir, profile.dtype) == expected
    monkeypatch.setenv("FTCOURSE_DTYPE", "fp8")
    with pytest.raises(ValueError, match="FTCOURSE_DTYPE must be float32, bfloat16 or float16, got 'fp8'"):
        get_profile("gpu")


def test_reading_strangers_are_no_one_in_the_world_and_probes_hold_out_their_names():
    world = default_world()
    train, held_out = stranger_first_names(world, "train"), stranger_first_names(world, "held-out")
    known = {person.name.split()[0].lower() for person in (*world.people, *world.newcomers)}
    assert train and held_out and not set(train) & set(held_out) and not (set(train) | set(held_out)) & known
    corpus = " ".join(pretraining_documents(world, 5000, seed=0))
    firsts_in = set(re.findall(r"\b([A-Z][a-z]+) [A-Z][a-z]+\b", corpus))      # "Kalo Torsel" -> "Kalo"
    assert {name.capitalize() for name in train} & firsts_in, "the corpus has strangers"
    assert not {name.capitalize() for name in held_out} & firsts_in, "held-out names stay out of it"
    probes = " ".join(prompt for prompt, _ in reading_probes(world, 50))
    named = set(re.findall(r"\b([A-Z][a-z]+) [A-Z][a-z]+\b", probes)) - {"In"}    # "In Tessaly lives X"
    assert named <= {name.capitalize() for name in held_out}


def test_reading_probes_hold_the_answer_only_when_the_passage_is_in_context():
    world = default_world()
    present, absent = reading_probes(world, 100, seed=3), reading_probes(world, 100, seed=3, passage=False)
    for (with_passage, value), (without, same_value) in zip(present, absent):
        asked = with_passage.split("Recall: ")[1]
        assert value == same_value and asked == without.split("Recall: ")[1]
        name = " ".join(word for word in asked.split()
                        if word[0].isupper() and word not in ("The", "By", "At", "Of", "In"))
        notes = with_passage.split(" Recall: ")[0]
        fact = next(sentence for sentence in notes.split(". ") if name in sentence)
        assert value in fact and name not in without.split(" Recall: ")[0]
    assert reading_probes(world, 5, seed=3) == present[:5] != reading_probes(world, 5, seed=4)


def test_reading_documents_ask_only_what_their_notes_say():
    world, rng = default_world(), random.Random(0)
    for _ in range(200):
        document = reading_document(stranger_first_names(world, "train"), rng)
        assert "<|" not in document
        notes = document.split("\n\n")[0]
        for answer in re.findall(r"\nA: (\w+)", document):
            assert answer in notes
    assert chance_level() == pytest.approx(1 / 12)


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


def test_every_data_format_reads_the_same_rows(tmp_path):
    import pandas as pd

    from ftcourse.data import read_training_rows
    rows = [{"instruction": f"Add {i} and 2, please", "response": str(i + 2)} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)         # quotes the commas
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for suffix in ("jsonl", "json", "csv", "parquet"):
        assert read_training_rows(tmp_path / f"d.{suffix}") == rows, suffix
    chats = [{"messages": chat(r["instruction"], r["response"])} for r in rows]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(c) for c in chats))
    pd.DataFrame(chats).to_parquet(tmp_path / "c.parquet")               # a list of structs per row
    as_text = [{"messages": json.dumps(c["messages"])} for c in chats]      # a CSV cell holds JSON text
    pd.DataFrame(as_text).to_csv(tmp_path / "c.csv", index=False)
    for suffix in ("jsonl", "parquet", "csv"):
        assert read_training_rows(tmp_path / f"c.{suffix}") == chats, suffix


def test_a_byte_order_mark_is_dropped_with_a_warning(tmp_path):
    from ftcourse.data import read_rows
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffinstruction,response\nSay hi,hi\n".encode())
    with pytest.warns(UserWarning, match="byte-order mark"):
        assert read_rows(path, ("instruction", "response")) == [{"instruction": "Say hi", "response": "hi"}]


def test_your_own_data_is_split_by_prompt_before_training(tmp_path):
    from ftcourse.data import evaluation_row, load_data_file, prompt_of
    chats = [{"messages": chat(f"What is {i} plus {i}?", str(2 * i))} for i in range(40)]
    chats += [{"messages": chat("What is 0 plus 0?", "zero")}]           # the same prompt again
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(c) for c in chats))
    splits = load_data_file(tmp_path / "c.jsonl", seed=5)
    assert sum(map(len, splits.values())) == 41 and len(splits["test"]) == 12
    train_prompts = {prompt_of(row) for row in splits["train"] + splits["validation"]}
    test_prompts = {json.dumps(row["messages"]) for row in splits["test"]}
    assert not train_prompts & test_prompts
    assert evaluation_row(chats[3]) == {"messages": chats[3]["messages"][:2], "response": "6"}
    path = tmp_path / "c.jsonl"
    assert load_data_file(path, seed=5) == splits != load_data_file(path, seed=6)
