"""The hand-written miniature KILT (tests/fixtures/mini_kilt) is valid KILT and says what
the tests and the quickstart rely on."""
from __future__ import annotations


import pytest

from kilt.io import iter_pages, read_task_file
from kilt.passages import chunk_page
from kilt.tasks import find_task_files, parse_task_filename

EXTRACTIVE = {"nq", "triviaqa", "hotpotqa", "trex", "structured_zeroshot"}


@pytest.fixture(scope="module")
def pages(mini_kilt) -> dict:
    return {page.wikipedia_id: page for page in iter_pages(mini_kilt / "knowledge_source.jsonl")}


@pytest.fixture(scope="module")
def tasks(mini_kilt) -> dict[str, dict[str, list]]:
    return {task: {split: read_task_file(path) for split, path in splits.items()}
            for task, splits in find_task_files(mini_kilt).items()}


def test_knowledge_source_has_70_pages_some_longer_than_one_passage(pages):
    assert len(pages) >= 70
    assert sum(len(chunk_page(page)) >= 2 for page in pages.values()) >= 10


def test_every_file_is_a_named_kilt_file_and_the_whole_is_small(mini_kilt):
    for path in mini_kilt.iterdir():
        assert path.name in ("knowledge_source.jsonl", "README.md") or parse_task_filename(path.name), path.name
    assert sum(p.stat().st_size for p in mini_kilt.iterdir()) < 300_000


def test_seven_tasks_each_with_train_and_dev(tasks):
    assert set(tasks) == {"nq", "triviaqa", "hotpotqa", "fever", "trex", "structured_zeroshot", "wow"}
    for task, splits in tasks.items():
        assert set(splits) == {"train", "dev"}, task
        assert 12 <= len(splits["train"]) <= 20 and 8 <= len(splits["dev"]) <= 12, task


def test_query_ids_are_unique_and_train_dev_disjoint(tasks):
    for task, splits in tasks.items():
        train, dev = ([e.id for e in splits[s]] for s in ("train", "dev"))
        assert len(set(train)) == len(train) and len(set(dev)) == len(dev), task
        assert not set(train) & set(dev), task


def test_provenance_points_at_body_paragraphs_of_existing_pages(tasks, pages):
    for task, splits in tasks.items():
        for example in (e for examples in splits.values() for e in examples):
            assert example.evidence, (task, example.id)
            for prov in (p for evidence in example.evidence for p in evidence):
                page = pages[prov.wikipedia_id]
                assert prov.title == page.title
                assert 1 <= prov.start_paragraph_id <= prov.end_paragraph_id < len(page.paragraphs)


def test_extractive_answers_occur_in_their_evidence(tasks, pages):
    for task in EXTRACTIVE:
        for example in tasks[task]["train"] + tasks[task]["dev"]:
            if example.answers in (["yes"], ["no"]):
                continue
            for evidence in example.evidence:
                text = " ".join(pages[p.wikipedia_id].paragraphs[i] for p in evidence
                                for i in range(p.start_paragraph_id, p.end_paragraph_id + 1))
                assert any(answer in text for answer in example.answers), (task, example.input)


def test_task_inputs_have_their_kilt_shape(tasks):
    examples = {task: splits["train"] + splits["dev"] for task, splits in tasks.items()}
    assert all(" [SEP] " in e.input for t in ("trex", "structured_zeroshot") for e in examples[t])
    assert all("\n" in e.input for e in examples["wow"])
    assert all(set(e.answers) <= {"SUPPORTS", "REFUTES"} for e in examples["fever"])
    assert {"SUPPORTS", "REFUTES"} <= {a for e in examples["fever"] for a in e.answers}


def test_there_are_multi_page_and_multi_evidence_set_queries(tasks):
    examples = [e for splits in tasks.values() for examples in splits.values() for e in examples]
    assert any(len({p.wikipedia_id for p in ev}) >= 2 for e in examples for ev in e.evidence)
    assert any(len(e.evidence) >= 2 for e in examples)
    assert all(len(e.gold_pages) == 2 for e in tasks["hotpotqa"]["dev"])
