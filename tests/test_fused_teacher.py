"""A fused teacher (`<reranker>@fused`): the reranker's scores of the training candidates
interpolated with the retriever's by the fusion weights fitted on held-out training queries."""
from __future__ import annotations

import json

import pytest

from conftest import kilt_folder
from multitask_retriever.experiment import Experiment, ExperimentConfig, RerankSection
from multitask_retriever.experiment.systems import check_teacher
from multitask_retriever.rerank.fusion import Fusion


@pytest.mark.parametrize("teacher, name", [("cross-encoder@fused", "cross-encoder@fused"),
                                           ("cross-encoder.contrastive@fused", "cross-encoder@fused"),
                                           ("qpeft-a@fused", "qpeft-a@fused")])
def test_any_trained_reranker_fused_can_teach(teacher, name):
    assert check_teacher(teacher) == name


@pytest.mark.parametrize("teacher", ["cross-encoder@rrf", "cross-encoder.distill@fused", "gpt-9@fused"])
def test_a_fused_teacher_needs_a_teacher_and_the_fitted_fusion(teacher):
    with pytest.raises(ValueError, match="bad teacher"):
        check_teacher(teacher)


def _scores(path) -> dict[tuple[str, str], float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {(row["qid"], row["pid"]): row["score"] for row in rows}


def test_fused_teacher_scores_interpolate_the_retrievers_and_the_rerankers(mini_kilt, tiny_bert, tmp_path):
    data = kilt_folder(mini_kilt, tmp_path / "data", ["nq", "fever"])
    common = dict(data_dir=str(data), work_dir=str(tmp_path / "work"), systems=["bm25+cross-encoder.distill"],
                  encoder=str(tiny_bert), cross_encoder=str(tiny_bert), teacher_queries=3, k=20, rerank_k=5,
                  rerank_queries=2, cross_encoder_steps=2, fusion_validation=0.4,
                  rerank=RerankSection(batch_size=2, group_size=3))
    Experiment(ExperimentConfig(teacher="cross-encoder", **common), progress=False).run()
    experiment = Experiment(ExperimentConfig(teacher="cross-encoder@fused", **common), progress=False)
    experiment.run()
    work = tmp_path / "work"
    raw = _scores(work / "teachers" / "bm25+cross-encoder" / "scores.jsonl")
    fused = _scores(work / "teachers" / "bm25+cross-encoder@fused" / "scores.jsonl")
    fusion = Fusion.load(work / "fusion" / "bm25+cross-encoder")
    assert fused.keys() == raw.keys() and fusion.method == "interpolate"
    bm25 = experiment.build.retriever("bm25")
    for example in experiment.build.rerankers.teacher.examples("bm25"):
        (hits,) = bm25.search([example.query], task=example.task, k=5)
        found = {str(h.passage_id): h.score for h in hits}
        retriever = [found.get(pid, min(found.values())) for pid in example.passage_ids]
        expected = fusion.scores(retriever, [raw[(example.qid, pid)] for pid in example.passage_ids], example.task)
        assert [fused[(example.qid, pid)] for pid in example.passage_ids] == pytest.approx(expected, abs=1e-6)
