"""benchmark-quality's fused systems: weights fitted on training queries held out from the
reranker's training, never on dev queries; raw and fused systems paired with their retriever."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import kilt_folder
from kilt.io import read_task_file
from multitask_retriever.experiment import Experiment, ExperimentConfig
from multitask_retriever.experiment.builders import SystemBuilder
from multitask_retriever.rerank.fusion import Fusion

TASKS = ["fever", "nq"]


@pytest.fixture(scope="module")
def small_kilt(mini_kilt, tmp_path_factory) -> Path:
    return kilt_folder(mini_kilt, tmp_path_factory.mktemp("small_kilt"), TASKS)


def _config(data: Path, work: Path, tiny_bert: Path, **overrides) -> ExperimentConfig:
    values = dict(data_dir=str(data), work_dir=str(work), encoder=str(tiny_bert), cross_encoder=str(tiny_bert),
                  systems=["bm25", "bm25+cross-encoder", "bm25+cross-encoder@fused", "bm25+cross-encoder@rrf"],
                  k=20, rerank_k=5, reranker_steps=2, reranker_batch_size=2, reranker_group_size=3,
                  fusion_validation=0.4)
    values.update(overrides)
    return ExperimentConfig(**values)


@pytest.fixture(scope="module")
def run(small_kilt, tiny_bert, tmp_path_factory, request):
    """The experiment, recording every query the reranker scored during the fusion fit."""
    work = tmp_path_factory.mktemp("work")
    seen: list[str] = []
    real = SystemBuilder.fusion

    def recording(self, retriever_name, reranker_name, reranker):
        original = reranker.rerank_many

        def spy(queries, passages, batch_size=32, tasks=None):
            seen.extend(queries)
            return original(queries, passages, batch_size, tasks)

        reranker.rerank_many = spy
        try:
            return real(self, retriever_name, reranker_name, reranker)
        finally:
            del reranker.rerank_many

    mp = pytest.MonkeyPatch()
    mp.setattr(SystemBuilder, "fusion", recording)
    request.addfinalizer(mp.undo)
    experiment = Experiment(_config(small_kilt, work, tiny_bert), progress=False)
    return experiment, experiment.run(), seen, work


def test_the_fit_sees_only_held_out_training_queries(run, small_kilt):
    experiment, _, seen, _ = run
    dev = {e.input for t in TASKS for e in read_task_file(small_kilt / f"{t}-dev-kilt.jsonl")}
    held_out = {e.input for t in TASKS for e in experiment.build.validation_queries(t)}
    trained = {e.input for t in TASKS for e in experiment.build.train_queries(t)}
    assert seen and set(seen) == held_out
    assert not held_out & dev and not held_out & trained


def test_the_fitted_weights_are_saved_and_reported(run):
    _, doc, _, work = run
    fusion = Fusion.load(work / "fusion" / "bm25+cross-encoder")
    assert fusion.method == "interpolate" and fusion.fit["global"]["queries"] > 0
    assert doc["systems"]["bm25+cross-encoder@fused"]["fusion"] == json.loads(
        (work / "fusion" / "bm25+cross-encoder" / "fusion.json").read_text())


def test_raw_and_fused_systems_are_paired_with_their_retriever_and_each_other(run):
    _, doc, _, _ = run
    pairs = {(row["a"], row["b"]) for row in doc["significance"] if row["task"] == "all"}
    assert {("bm25+cross-encoder", "bm25"), ("bm25+cross-encoder@fused", "bm25"),
            ("bm25+cross-encoder@rrf", "bm25"), ("bm25+cross-encoder@fused", "bm25+cross-encoder")} <= pairs


def test_a_fused_system_needs_held_out_queries(small_kilt, tiny_bert, tmp_path):
    config = _config(small_kilt, tmp_path, tiny_bert, fusion_validation=0.0,
                     systems=["bm25+cross-encoder@fused"])
    with pytest.raises(ValueError, match="fusion_validation > 0"):
        Experiment(config, progress=False)


def test_a_bad_fusion_name_is_refused_before_any_work(small_kilt, tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="a reranked system takes @fused or @rrf"):
        Experiment(_config(small_kilt, tmp_path, tiny_bert, systems=["bm25@fused"]), progress=False)


def test_fusion_min_validation_holds_out_more_of_a_small_task(small_kilt, tiny_bert, tmp_path):
    def held(**overrides) -> dict[str, int]:
        build = Experiment(_config(small_kilt, tmp_path, tiny_bert, fusion_validation=0.1, **overrides),
                           progress=False).build
        return {t: len(build.validation_queries(t)) for t in TASKS}

    sizes = {t: len(read_task_file(small_kilt / f"{t}-train-kilt.jsonl")) for t in TASKS}
    assert held() == {t: round(0.1 * n) for t, n in sizes.items()}
    assert held(fusion_min_validation=3) == {t: max(round(0.1 * n), min(3, n // 2)) for t, n in sizes.items()}


def test_fusion_min_validation_is_part_of_the_rerankers_stage_key(small_kilt, tiny_bert, tmp_path):
    def key(**overrides) -> dict:
        return Experiment(_config(small_kilt, tmp_path, tiny_bert, **overrides), progress=False).build._holdout_key()

    assert "fusion_min_validation" not in key()
    assert key(fusion_min_validation=3)["fusion_min_validation"] == 3
    assert "fusion_min_validation" not in key(fusion_validation=0.0, fusion_min_validation=3, systems=["bm25"])
    with pytest.raises(ValueError, match="fusion_min_validation must be >= 0"):
        _config(small_kilt, tmp_path, tiny_bert, fusion_min_validation=-1)
