"""Memory-mapped training examples read back exactly what the JSONL file holds, are rewritten
when the file changes, and refuse bad input without leaving anything behind."""
import json
import os

import pytest

from kilt.io import KiltFormatError
from multitask_retriever.data import MultitaskBatches
from multitask_retriever.examples import (MappedExamples, TrainingExample, example_counts, map_training_examples,
                                          read_training_examples, write_training_examples)

EXAMPLES = {
    "wow": [TrainingExample("wow", "w1", "Hi! I love jazz.\nWho played 'So What'? ☕", (3, 4), (7, 8, 9), ("11", "12")),
            TrainingExample("wow", "w2", "", (5,), (), ("13",))],
    "fever": [TrainingExample("fever", "f1", "Paris is in France.", (0,), (1, 2), ("10",))],
}


@pytest.fixture
def example_file(tmp_path):
    path = tmp_path / "examples.jsonl"
    write_training_examples(path, EXAMPLES)
    return path


def test_mapped_examples_equal_the_file_read_as_objects(example_file, tmp_path):
    mapped = map_training_examples(example_file, tmp_path / "arrays")
    assert all(isinstance(e, MappedExamples) for e in mapped.values())
    assert {t: list(e) for t, e in mapped.items()} == read_training_examples(example_file) == EXAMPLES


def test_a_slice_of_mapped_examples_is_a_mapped_view(example_file, tmp_path):
    wow = map_training_examples(example_file, tmp_path / "arrays")["wow"]
    assert isinstance(wow[1:], MappedExamples)
    assert list(wow[1:]) == EXAMPLES["wow"][1:]
    assert wow[-1] == EXAMPLES["wow"][-1]


def test_only_the_tasks_asked_for_in_their_order(example_file, tmp_path):
    assert list(map_training_examples(example_file, tmp_path / "arrays", ["fever", "wow"])) == ["fever", "wow"]
    with pytest.raises(ValueError, match="no training examples for task.*nq"):
        map_training_examples(example_file, tmp_path / "arrays", ["nq"])


def test_the_arrays_are_written_once_and_again_when_the_file_changes(example_file, tmp_path):
    folder = tmp_path / "arrays"
    map_training_examples(example_file, folder)
    written = (folder / "manifest.json").stat().st_mtime_ns
    map_training_examples(example_file, folder)
    assert (folder / "manifest.json").stat().st_mtime_ns == written
    write_training_examples(example_file, {"nq": [TrainingExample("nq", "q", "who?", (1,), (2,), ("3",))]})
    assert {t: list(e) for t, e in map_training_examples(example_file, folder).items()} == {
        "nq": [TrainingExample("nq", "q", "who?", (1,), (2,), ("3",))]}


def test_a_bad_line_is_refused_by_its_place_and_leaves_no_folder(tmp_path):
    path = tmp_path / "examples.jsonl"
    path.write_text(json.dumps(EXAMPLES["fever"][0].to_json()) + "\n" + '{"task": "fever", "id": "x"}\n')
    with pytest.raises(KiltFormatError, match=r"examples.jsonl:2: not a training example"):
        map_training_examples(path, tmp_path / "arrays")
    assert sorted(os.listdir(tmp_path)) == ["examples.jsonl"]


def test_the_arrays_never_go_where_they_would_replace_the_file(example_file, tmp_path):
    with pytest.raises(ValueError, match="would write over the training examples"):
        map_training_examples(example_file, tmp_path)
    assert example_file.is_file()


def test_counts_from_the_offsets_equal_counts_over_objects(example_file, tmp_path):
    mapped = map_training_examples(example_file, tmp_path / "arrays")
    assert example_counts(mapped) == example_counts(EXAMPLES) == {
        "wow": {"queries": 2, "positives": 1.5, "negatives": 1.5},
        "fever": {"queries": 1, "positives": 1.0, "negatives": 2.0}}


def test_batches_over_mapped_examples_equal_batches_over_objects(training_data, tmp_path):
    store, examples = training_data
    path = tmp_path / "examples.jsonl"
    write_training_examples(path, examples)
    mapped = map_training_examples(path, tmp_path / "arrays")
    as_objects = MultitaskBatches(examples, store, 3, n_negatives=2, seed=1)
    as_mapped = MultitaskBatches(mapped, store, 3, n_negatives=2, seed=1)
    for task in as_objects.tasks:
        for step in range(4):
            a, b = as_objects.batch(task, step), as_mapped.batch(task, step)
            assert (a.qids, a.queries, a.passages) == (b.qids, b.queries, b.passages)
            assert a.exclude.equal(b.exclude)
