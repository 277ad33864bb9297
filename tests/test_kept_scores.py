"""Reranker scores kept across an experiment's systems: a raw, a fused and an rrf system of one
reranker score every (task, query, passage) pair once, and read the same scores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import kilt_folder
from multitask_retriever.experiment import Experiment, ExperimentConfig
from multitask_retriever.experiment.stages.scores import KeptScores


class CountingReranker:
    """Scores a pair by the length of its passage, counting the pairs it was asked for."""

    def __init__(self):
        self.pairs = 0

    def rerank_many(self, queries, passages, batch_size=32, tasks=None):
        self.pairs += sum(len(row) for row in passages)
        return [[float(len(p)) for p in row] for row in passages]


def test_only_the_pairs_not_yet_scored_reach_the_reranker(tmp_path):
    reranker = CountingReranker()
    kept = KeptScores(reranker, tmp_path / "scores.json")
    assert kept.rerank_many(["q1"], [["a", "bb"]], tasks=["nq"]) == [[1.0, 2.0]]
    assert kept.rerank_many(["q1", "q2"], [["a", "bb"], ["ccc"]], tasks=["nq", "nq"]) == [[1.0, 2.0], [3.0]]
    assert reranker.pairs == 3


def test_the_same_query_of_another_task_is_scored_again(tmp_path):
    reranker = CountingReranker()
    kept = KeptScores(reranker, tmp_path / "scores.json")
    kept.rerank_many(["q"], [["a"]], tasks=["nq"])
    kept.rerank_many(["q"], [["a"]], tasks=["fever"])
    assert reranker.pairs == 2


def test_saved_scores_are_read_back_without_scoring(tmp_path):
    path = tmp_path / "scores" / "reranker.json"
    first = KeptScores(CountingReranker(), path)
    first.rerank_many(["q"], [["a", "bb"]], tasks=["nq"])
    first.save()
    again = CountingReranker()
    assert KeptScores(again, path).rerank_many(["q"], [["a", "bb"]], tasks=["nq"]) == [[1.0, 2.0]]
    assert again.pairs == 0
    assert [p.name for p in path.parent.iterdir()] == ["reranker.json"]  # no temporary file left


def test_nothing_new_writes_nothing(tmp_path):
    KeptScores(CountingReranker(), tmp_path / "scores.json").save()
    assert not (tmp_path / "scores.json").exists()


def test_a_raw_and_an_rrf_system_of_one_reranker_score_each_pair_once(mini_kilt, tiny_bert, tiny_llama, tmp_path,
                                                                     monkeypatch):
    data = kilt_folder(mini_kilt, tmp_path / "kilt", ["nq"])
    config = ExperimentConfig(data_dir=str(data), work_dir=str(tmp_path / "work"), k=10, rerank_k=4,
                              dev_queries=3, encoder=str(tiny_bert), llm=str(tiny_llama),
                              systems=["zero-shot", "zero-shot+zero-shot", "zero-shot+zero-shot@rrf"])
    experiment = Experiment(config, progress=False)
    reranker_class = type(experiment.build.reranker("zero-shot", "zero-shot"))
    pairs, rerank_many = [], reranker_class.rerank_many
    monkeypatch.setattr(reranker_class, "rerank_many", lambda self, q, p, **kw: (pairs.append(sum(map(len, p))),
                                                                                rerank_many(self, q, p, **kw))[1])
    doc = experiment.run()
    assert sum(pairs) == 3 * 4
    raw = [json.loads(line) for line in (tmp_path / "work/predictions/zero-shot+zero-shot/nq-dev.jsonl").open()]
    rrf = [json.loads(line) for line in (tmp_path / "work/predictions/zero-shot+zero-shot@rrf/nq-dev.jsonl").open()]
    assert len(raw) == len(rrf) == 3
    assert set(doc["systems"]) == set(config.systems)
