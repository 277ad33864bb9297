"""Cross-encoder training schedules in `mtr benchmark-quality` (Pezzuti et al.): contrastive,
distill, and the two in sequence, each stage continuing the cached model of the stages
before it, distillation reading the teacher's scores of the retriever's candidates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import multitask_retriever.rerank.train as rerank_train
from conftest import kilt_folder
from multitask_retriever.experiment import Experiment, ExperimentConfig, cross_encoder_schedule
from multitask_retriever.experiment.systems import check_teacher

SCHEDULES = ["cross-encoder", "cross-encoder.distill", "cross-encoder.contrastive.distill",
             "cross-encoder.distill.contrastive"]


def _checksum(reranker) -> float:
    return float(sum(p.detach().double().sum() for p in reranker.trainable_parameters()))


@pytest.fixture(scope="module")
def run(mini_kilt, tiny_bert, tiny_llama, tmp_path_factory):
    """Every schedule over BM25 on two mini-KILT tasks (zero-shot LLM teacher), with each call
    of the reranker training loop recorded: its loss, examples and starting weights."""
    data = kilt_folder(mini_kilt, tmp_path_factory.mktemp("data"), ["nq", "fever"])
    calls = []
    real = rerank_train.train_reranker

    def spy(reranker, examples, config, **kwargs):
        start = _checksum(reranker)
        result = real(reranker, examples, config, **kwargs)
        calls.append({"folder": Path(config.output_dir).parent.name, "loss": config.loss, "examples": list(examples),
                      "start": start, "end": _checksum(reranker)})
        return result

    config = ExperimentConfig(
        data_dir=str(data), work_dir=str(data / "work"), systems=["bm25"] + [f"bm25+{s}" for s in SCHEDULES],
        encoder=str(tiny_bert), cross_encoder=str(tiny_bert), llm=str(tiny_llama), teacher="zero-shot",
        teacher_queries=3, k=20, rerank_k=5, rerank_queries=2, cross_encoder_steps=2, reranker_batch_size=2,
        reranker_group_size=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rerank_train, "train_reranker", spy)
        doc = Experiment(config, progress=False).run()
    return doc, calls, data / "work"


def test_every_stage_trains_once(run):
    _, calls, _ = run
    assert [(c["folder"], c["loss"]) for c in calls] == [
        ("bm25+cross-encoder", "lce"), ("bm25+cross-encoder.distill", "ranknet"),
        ("bm25+cross-encoder.contrastive.distill", "ranknet"), ("bm25+cross-encoder.distill.contrastive", "lce")]


def test_a_second_stage_starts_from_the_first_stages_final_weights(run):
    _, calls, _ = run
    by = {c["folder"]: c for c in calls}
    assert by["bm25+cross-encoder.contrastive.distill"]["start"] == pytest.approx(by["bm25+cross-encoder"]["end"],
                                                                                   rel=1e-12)
    assert by["bm25+cross-encoder.distill.contrastive"]["start"] == pytest.approx(
        by["bm25+cross-encoder.distill"]["end"], rel=1e-12)
    assert by["bm25+cross-encoder.distill"]["start"] == pytest.approx(by["bm25+cross-encoder"]["start"], rel=1e-12)


def test_distillation_reads_the_teachers_scores_of_at_most_teacher_queries_per_task(run):
    _, calls, work = run
    lines = [json.loads(line) for line in (work / "teachers" / "bm25+zero-shot" / "scores.jsonl").read_text().splitlines()]
    scored = {(row["qid"], row["pid"]): row["score"] for row in lines}
    for call in calls:
        if call["loss"] != "ranknet":
            continue
        assert 0 < len(call["examples"]) <= 2 * 3
        for example in call["examples"]:
            assert example.teacher_scores == [scored[(example.qid, pid)] for pid in example.passage_ids]


def test_each_schedule_is_compared_with_single_stage_contrastive(run):
    doc, _, _ = run
    pairs = {(row["a"], row["b"]) for row in doc["significance"] if row["task"] == "all"}
    for schedule in SCHEDULES[1:]:
        assert (f"bm25+{schedule}", "bm25+cross-encoder") in pairs
    for name in SCHEDULES:
        assert 0.0 <= doc["systems"][f"bm25+{name}"]["avg"]["Rprec"] <= 1.0


def test_trained_llm_rerankers_are_compared_with_zero_shot_query_likelihood(mini_kilt, tiny_bert, tiny_llama,
                                                                         tmp_path):
    data = kilt_folder(mini_kilt, tmp_path / "data", ["nq"])
    config = ExperimentConfig(
        data_dir=str(data), work_dir=str(tmp_path / "work"), systems=["bm25", "bm25+zero-shot", "bm25+qpeft-r"],
        llm=str(tiny_llama), k=20, rerank_k=3, rerank_queries=2, reranker_steps=1, reranker_batch_size=2,
        reranker_group_size=3)
    doc = Experiment(config, progress=False).run()
    pairs = {(row["a"], row["b"]) for row in doc["significance"] if row["task"] == "all"}
    assert pairs == {("bm25+zero-shot", "bm25"), ("bm25+qpeft-r", "bm25"), ("bm25+qpeft-r", "bm25+zero-shot")}


def test_schedule_names():
    assert cross_encoder_schedule("cross-encoder") == ["contrastive"]
    assert cross_encoder_schedule("cross-encoder.distill.contrastive") == ["distill", "contrastive"]
    assert cross_encoder_schedule("qpeft-a") is None
    with pytest.raises(ValueError, match="unknown cross-encoder stage 'pretrain'"):
        cross_encoder_schedule("cross-encoder.pretrain")


@pytest.mark.parametrize("teacher", ["gpt-9", "cross-encoder.distill", "cross-encoder.contrastive.distill"])
def test_a_teacher_that_is_no_trained_reranker_or_needs_a_teacher_itself_is_refused(mini_kilt, tmp_path, teacher):
    config = ExperimentConfig(data_dir=str(mini_kilt), work_dir=str(tmp_path), systems=["bm25+cross-encoder.distill"],
                              teacher=teacher)
    with pytest.raises(ValueError, match=f"bad teacher '{teacher}'"):
        Experiment(config, progress=False)


@pytest.mark.parametrize("teacher, name", [("qpeft-a", "qpeft-a"), ("cross-encoder", "cross-encoder"),
                                           ("cross-encoder.contrastive", "cross-encoder")])
def test_any_trained_reranker_can_teach(teacher, name):
    assert check_teacher(teacher) == name


def test_a_cross_encoder_teaches_a_distilled_cross_encoder(mini_kilt, tiny_bert, tmp_path):
    data = kilt_folder(mini_kilt, tmp_path / "data", ["nq"])
    config = ExperimentConfig(
        data_dir=str(data), work_dir=str(tmp_path / "work"), systems=["bm25+cross-encoder.distill"],
        encoder=str(tiny_bert), cross_encoder=str(tiny_bert), teacher="cross-encoder.contrastive", teacher_queries=3,
        k=20, rerank_k=5, rerank_queries=2, cross_encoder_steps=2, reranker_batch_size=2, reranker_group_size=3)
    Experiment(config, progress=False).run()
    scores = (tmp_path / "work" / "teachers" / "bm25+cross-encoder" / "scores.jsonl").read_text().splitlines()
    assert scores and (tmp_path / "work" / "rerankers" / "bm25+cross-encoder" / "stage.json").is_file()


def test_the_llm_rerankers_loss_can_be_the_released_qpeft_loss(mini_kilt, tiny_bert, tiny_llama, tmp_path):
    data = kilt_folder(mini_kilt, tmp_path / "data", ["nq"])
    losses = []
    real = rerank_train.train_reranker

    def spy(reranker, examples, config, **kwargs):
        losses.append(config.loss)
        return real(reranker, examples, config, **kwargs)

    config = ExperimentConfig(data_dir=str(data), work_dir=str(tmp_path / "work"), systems=["bm25+qpeft-a"],
                              llm=str(tiny_llama), llm_reranker_loss="ql+hinge", k=20, rerank_k=5, rerank_queries=2,
                              reranker_steps=1, reranker_batch_size=2, reranker_group_size=3, fusion_validation=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rerank_train, "train_reranker", spy)
        Experiment(config, progress=False).run()
    assert losses == ["ql+hinge"]
