"""data/kilt-mini, the embedded real benchmark: it loads with the toolkit's readers, its links
resolve, its splits stay apart, and its licence file names every source it draws on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilt.io import iter_jsonl, iter_pages, read_task_file
from kilt.passages import iter_passages
from kilt.tasks import find_task_files, query_group

KILT_MINI = Path(__file__).resolve().parents[1] / "data" / "kilt-mini"
TASKS = ("fever", "hotpotqa", "nq", "wow")
TRAIN_QUERIES = {"fever": 250, "hotpotqa": 173, "nq": 250, "wow": 250}
DEV_QUERIES = {task: 100 for task in TASKS}
PAGES = 2141
PASSAGES = 3719
# the dataset and licence LICENSE must name for each task's queries
TASK_LICENCES = {"fever": ("FEVER", "CC BY-SA 3.0"), "hotpotqa": ("HotpotQA", "CC BY-SA 4.0"),
                 "nq": ("Natural Questions", "CC BY-SA 3.0"), "wow": ("Wizard of Wikipedia", "CC BY 4.0")}


@pytest.fixture(scope="module")
def pages() -> dict:
    """The knowledge source's pages by id, read with kilt.io (which refuses a repeated id)."""
    return {page.wikipedia_id: page for page in iter_pages(KILT_MINI / "knowledge_source.jsonl.gz")}


@pytest.fixture(scope="module")
def task_files() -> dict[str, dict[str, Path]]:
    return find_task_files(KILT_MINI)


@pytest.fixture(scope="module")
def examples(task_files) -> dict[tuple[str, str], list]:
    """(task, split) -> the file's KiltExamples, read with kilt.io."""
    return {(task, split): read_task_file(path) for task, splits in task_files.items()
            for split, path in splits.items()}


def _records(path: Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


def _license() -> str:
    return (KILT_MINI / "LICENSE").read_text(encoding="utf-8")


def test_the_tasks_are_exactly_fever_hotpotqa_nq_and_wow_each_with_train_and_dev(task_files):
    assert {task: sorted(splits) for task, splits in task_files.items()} == {
        task: ["dev", "train"] for task in TASKS}


def test_the_folder_holds_the_data_files_the_readme_and_the_licence_only():
    names = sorted(path.name for path in KILT_MINI.iterdir())
    assert names == sorted(["LICENSE", "README.md", "knowledge_source.jsonl.gz",
                            *(f"{task}-{split}-kilt.jsonl" for task in TASKS for split in ("train", "dev"))])


def test_the_knowledge_source_loads_with_kilt_io_and_has_the_documented_page_count(pages):
    assert len(pages) == PAGES


def test_the_knowledge_source_makes_the_documented_number_of_passages(pages):
    assert sum(1 for _ in iter_passages(pages.values())) == PASSAGES


def test_every_task_file_loads_with_kilt_io_with_the_documented_query_count(examples):
    assert {task: len(examples[task, "train"]) for task in TASKS} == TRAIN_QUERIES
    assert {task: len(examples[task, "dev"]) for task in TASKS} == DEV_QUERIES


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("split", ["train", "dev"])
def test_ids_are_unique_within_each_task_file(examples, task, split):
    ids = [example.id for example in examples[task, split]]
    assert len(set(ids)) == len(ids)


def test_every_provenance_page_is_in_the_knowledge_source(examples, pages):
    missing = {(task, split, example.id, page) for (task, split), file in examples.items()
               for example in file for page in example.gold_pages if page not in pages}
    assert missing == set()


@pytest.mark.parametrize("task", TASKS)
def test_every_dev_query_has_a_gold_page_and_all_of_them_are_present(examples, pages, task):
    for example in examples[task, "dev"]:
        assert example.gold_pages, example.id
        assert all(page in pages for page in example.gold_pages), example.id


def test_hotpotqa_queries_have_two_gold_pages(examples):
    assert {len(example.gold_pages) for split in ("train", "dev") for example in examples["hotpotqa", split]} == {2}


def test_no_input_text_occurs_in_two_files(examples):
    seen: dict[str, tuple[str, str]] = {}
    for key, file in examples.items():
        for example in file:
            assert seen.setdefault(example.input, key) == key, (example.id, seen[example.input], key)


@pytest.mark.parametrize("task", TASKS)
def test_no_query_group_is_in_both_train_and_dev(task):
    """Groups as the toolkit's grouped splits see them (kilt.tasks.query_group): for wow the
    conversation, for the other tasks the query itself."""
    def groups(split: str) -> set[str]:
        return {query_group(record["id"], record.get("meta"), task)
                for record in _records(KILT_MINI / f"{task}-{split}-kilt.jsonl")}

    assert groups("train").isdisjoint(groups("dev"))


def test_wow_holds_the_documented_number_of_conversations():
    conversations = {split: {record["meta"]["group"] for record in _records(KILT_MINI / f"wow-{split}-kilt.jsonl")}
                     for split in ("train", "dev")}
    assert {split: len(groups) for split, groups in conversations.items()} == {"train": 186, "dev": 70}


@pytest.mark.parametrize("task", TASKS)
def test_the_licence_names_each_tasks_dataset_and_its_licence(task):
    dataset, licence = TASK_LICENCES[task]
    section = _license().split(f"\n{task} - ", 1)[1].split("\n\n", 1)[0]
    assert section.startswith(dataset)
    assert f"Licence: {licence}" in section


def test_the_licence_names_the_source_of_every_query(examples, task_files):
    sources = {record["meta"]["source"] for splits in task_files.values() for path in splits.values()
               for record in _records(path)}
    text = " ".join(_license().split())  # sources may wrap across lines
    assert sorted(source for source in sources if f'meta.source "{source}"' not in text) == []


def test_the_licence_names_the_source_of_every_page():
    sources = {record["source"] for _, record in iter_jsonl(KILT_MINI / "knowledge_source.jsonl.gz")}
    assert sorted(source for source in sources if f"\n{source} - " not in _license()) == []


def test_the_licence_names_wikipedia_kilt_and_wikidata():
    text = _license()
    assert "English Wikipedia" in text and "CC BY-SA 3.0" in text
    assert "\nKILT - " in text and "Licence: MIT" in text
    assert "Wikidata: CC0 1.0" in text


def test_the_readme_states_the_counts_the_files_hold(examples, pages):
    readme = (KILT_MINI / "README.md").read_text(encoding="utf-8")
    assert f"{PAGES:,} pages" in readme and f"{PASSAGES:,} passages" in readme
    for task in TASKS:
        row = next(line for line in readme.splitlines() if line.startswith(f"| {task} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2].split()[0] == str(len(examples[task, "train"])), row
        assert cells[3].split()[0] == str(len(examples[task, "dev"])), row
        gold = {page for split in ("train", "dev") for example in examples[task, split] for page in example.gold_pages}
        assert cells[4] == f"{len(gold):,}", row


def test_the_task_files_are_plain_kilt_records_one_json_object_a_line():
    for path in sorted(KILT_MINI.glob("*-kilt.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert all(set(json.loads(line)) >= {"id", "input", "output"} for line in lines), path.name
