"""`mtr benchmark-quality --seeds`: every system once per seed, means with their spread, tests
against naive over pooled (seed, query) pairs, and TACO's per-layer specialisation."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from conftest import kilt_folder
from multitask_retriever.cli import main
from multitask_retriever.experiment import ExperimentConfig, SeedStudy

TASKS = ["fever", "nq"]
SYSTEMS = ["bm25", "naive", "taco", "single-fever", "single-nq"]


@pytest.fixture(scope="module")
def study(mini_kilt, tiny_bert, tmp_path_factory) -> tuple[dict, Path]:
    data = kilt_folder(mini_kilt, tmp_path_factory.mktemp("kilt"), TASKS)
    out = tmp_path_factory.mktemp("out") / "study.json"
    code = main(["benchmark-quality", str(data), "--out", str(out), "--work-dir", str(out.parent / "work"),
                 "--quiet", "--systems", ",".join(SYSTEMS), "--seeds", "3,4", "--encoder", str(tiny_bert),
                 "--k", "20", "--train-steps", "3", "--train-per-task-batch-size", "4", "--train-warmup-ratio", "0.34",
                 "--train-task-temperature", "4", "--train-negative-sampling", "top"])
    assert code == 0
    return json.loads(out.read_text()), out


def test_each_seed_trains_in_its_own_folder(study):
    doc, out = study
    assert doc["seeds"] == [3, 4]
    for seed in (3, 4):
        state = out.parent / "work" / f"seed-{seed}" / "train" / "taco" / "run" / "final" / "trainer_state.pt"
        assert state.is_file()


def test_single_task_models_are_one_system_scored_on_their_own_tasks(study):
    doc, _ = study
    assert list(doc["systems"]) == ["bm25", "naive", "taco", "single"]


def test_means_and_spread_come_from_the_per_seed_scores(study):
    doc, _ = study
    for result in doc["systems"].values():
        for metrics in result["per_task"].values():
            seeds = metrics["Rprec_seeds"]
            assert len(seeds) == 2
            assert metrics["Rprec"] == pytest.approx(statistics.fmean(seeds))
            assert metrics["Rprec_std"] == pytest.approx(statistics.stdev(seeds))
    bm25 = doc["systems"]["bm25"]["per_task"]
    assert all(m["Rprec_std"] == 0.0 for m in bm25.values())  # BM25 draws nothing


def test_tests_against_naive_pool_the_queries_of_every_seed(study):
    doc, _ = study
    rows = {(r["a"], r["task"]): r for r in doc["significance"]}
    assert {a for a, _ in rows} == {"taco", "single"}
    for task in TASKS:
        n_dev = doc["systems"]["naive"]["per_task"][task]["n"]
        assert rows[("taco", task)]["n"] == 2 * n_dev
    assert rows[("taco", "all")]["n"] == 2 * sum(doc["systems"]["naive"]["per_task"][t]["n"] for t in TASKS)


def test_taco_specialisation_and_the_reports_are_written(study):
    doc, out = study
    spec = doc["specialization"]
    assert spec["seeds"] == [3, 4]
    assert spec["max_entropy"] == pytest.approx(0.6931, abs=1e-4)
    assert spec["tasks"] == TASKS
    assert all(0.0 <= layer["entropy"] <= spec["max_entropy"] + 1e-6 for layer in spec["layers"].values())
    assert all(sum(layer["task_weights"].values()) == pytest.approx(1.0) for layer in spec["layers"].values())
    table = out.with_suffix(".md").read_text()
    assert "| taco vs naive |" not in table and "| taco |" in table and "uniform = 0.693" in table
    assert out.with_name("study-specialization.png").stat().st_size > 1000


def test_training_curves_are_the_seed_means_of_each_step(study):
    doc, out = study
    curves = doc["training"]
    assert sorted(curves) == ["naive", "single-fever", "single-nq", "taco"]
    logs = [[json.loads(line) for line in (out.parent / "work" / f"seed-{s}" / "train" / "taco" / "run" /
                                            "train_log.jsonl").read_text().splitlines()] for s in (3, 4)]
    for key in ("loss", "update_norm", "step_norm", "weight_entropy"):
        assert curves["taco"][key] == pytest.approx([statistics.fmean(r[i][key] for r in logs) for i in range(3)])
    assert "weight_entropy" not in curves["naive"] and len(curves["naive"]["update_norm"]) == 3


def test_a_study_needs_two_seeds(tmp_path):
    with pytest.raises(ValueError, match="at least two different seeds"):
        SeedStudy(ExperimentConfig(data_dir=str(tmp_path)), [1, 1])
