"""The product on real KILT data (../shared/realkilt): a slice of a few hundred real queries,
their gold pages and random distractor pages. Skipped, with the reason, where ../shared is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

from kilt.io import read_task_file
from kilt.subset import make_subset
from multitask_retriever.experiment import Experiment, ExperimentConfig

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

QUERIES = 40  # per task and split
DISTRACTORS = 400


@pytest.fixture(scope="module")
def real_slice(realkilt, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("realkilt_slice")
    summary = make_subset(realkilt, realkilt / "knowledge_source.jsonl", out, queries_per_split=QUERIES,
                          distractors=DISTRACTORS, seed=0, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def doc(real_slice, tmp_path_factory) -> dict:
    data, _ = real_slice
    config = ExperimentConfig(data_dir=str(data), work_dir=str(tmp_path_factory.mktemp("work")),
                              systems=["bm25", "zero-shot"], k=20)
    return Experiment(config, progress=False).run()


def test_the_slice_holds_real_queries_and_all_their_gold_pages(real_slice):
    data, summary = real_slice
    assert summary["missing_pages"] == []
    assert summary["distractor_pages"] == DISTRACTORS
    assert {p.name for p in data.glob("*-dev-kilt.jsonl")} == {f"{t}-dev-kilt.jsonl" for t in ("fever", "nq", "trex", "wow")}
    assert all(len(read_task_file(p)) == QUERIES for p in data.glob("*-kilt.jsonl"))


def test_zero_shot_dense_beats_chance_by_a_wide_margin(doc, real_slice):
    _, summary = real_slice
    pages = summary["gold_pages"] + summary["distractor_pages"]
    chance = 1.0 / pages  # R-precision of a random page ranking, at best about R / pages
    for task, metrics in doc["systems"]["zero-shot"]["per_task"].items():
        assert metrics["n"] == QUERIES
        assert metrics["Rprec"] > 50 * chance, task
        assert metrics["recall@5"] > 0.3, task
    assert doc["systems"]["zero-shot"]["avg"]["Rprec"] > 0.5


def test_bm25_is_measured_on_the_same_queries(doc):
    bm25 = doc["systems"]["bm25"]
    assert set(bm25["per_task"]) == {"fever", "nq", "trex", "wow"}
    assert 0.2 < bm25["avg"]["Rprec"] <= 1.0
