"""kilt.predict.predict_file: a task file ranked by any page-ranking function into a KILT prediction file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilt.io import KiltFormatError, read_predictions
from kilt.predict import predict_file


def task_file(path: Path, inputs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "input": text}) + "\n" for i, text in enumerate(inputs)))
    return path


class Ranker:
    """Ranks page "<query>-<task>" first and records each call's queries and task."""

    def __init__(self):
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, queries: list[str], task: str | None) -> list[list[str]]:
        self.calls.append((queries, task))
        return [[f"{q}-{task}", "0"] for q in queries]


def test_every_query_is_ranked_in_batches_and_written(tmp_path):
    ranker = Ranker()
    n = predict_file(ranker, task_file(tmp_path / "nq-dev-kilt.jsonl", ["a", "b", "c"]), tmp_path / "out.jsonl",
                     batch_size=2, progress=False)
    assert n == 3
    assert ranker.calls == [(["a", "b"], "nq"), (["c"], "nq")]  # the task from the file name
    assert read_predictions(tmp_path / "out.jsonl") == {"q0": ["a-nq", "0"], "q1": ["b-nq", "0"], "q2": ["c-nq", "0"]}


def test_a_given_task_wins_and_other_file_names_give_none(tmp_path):
    ranker = Ranker()
    predict_file(ranker, task_file(tmp_path / "nq-dev-kilt.jsonl", ["a"]), tmp_path / "1.jsonl", task="fever",
                 progress=False)
    predict_file(ranker, task_file(tmp_path / "queries.jsonl", ["a"]), tmp_path / "2.jsonl", progress=False)
    assert [task for _, task in ranker.calls] == ["fever", None]
    with pytest.raises(ValueError, match="queries.jsonl: cannot tell the task from the file name; pass task="):
        predict_file(ranker, tmp_path / "queries.jsonl", tmp_path / "3.jsonl", require_task=True, progress=False)


def test_max_queries_keeps_the_first_ones(tmp_path):
    n = predict_file(Ranker(), task_file(tmp_path / "nq-dev-kilt.jsonl", ["a", "b", "c"]), tmp_path / "out.jsonl",
                     max_queries=2, progress=False)
    assert n == 2 and list(read_predictions(tmp_path / "out.jsonl")) == ["q0", "q1"]


def test_a_blank_query_fails_before_any_ranking_naming_line_and_id(tmp_path):
    ranker = Ranker()
    gold = task_file(tmp_path / "nq-dev-kilt.jsonl", ["a", "b", " ", "d"])
    with pytest.raises(KiltFormatError, match=r"nq-dev-kilt.jsonl:3: record q2 has no input text$"):
        predict_file(ranker, gold, tmp_path / "out.jsonl", batch_size=1, progress=False)
    assert ranker.calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["nq-dev-kilt.jsonl"]


def test_a_ranker_returning_too_few_rankings_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="returned 1 rankings for 2 queries"):
        predict_file(lambda queries, task: [["1"]], task_file(tmp_path / "nq-dev-kilt.jsonl", ["a", "b"]),
                     tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()
