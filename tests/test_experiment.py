"""`mtr benchmark-quality` end to end on small KILT folders with tiny models: the result
document's shape, real measurements in [0, 1], stage reuse, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import kilt_folder
from kilt.io import read_task_file
from multitask_retriever.cli import main
from multitask_retriever.experiment import Experiment, ExperimentConfig

TASKS = ["fever", "nq", "wow"]


@pytest.fixture(scope="module")
def small_kilt(mini_kilt, tmp_path_factory) -> Path:
    """Three tasks of the mini KILT, copied so tests may change them."""
    return kilt_folder(mini_kilt, tmp_path_factory.mktemp("small_kilt"), TASKS)


def _config(data: Path, work: Path, **overrides) -> ExperimentConfig:
    values = dict(data_dir=str(data), work_dir=str(work), systems=["bm25", "zero-shot"], k=20)
    values.update(overrides)
    return ExperimentConfig(**values)


SYSTEMS = ["bm25", "zero-shot", "naive", "taco", "single-nq", "taco+cross-encoder", "taco+qpeft-a"]


@pytest.fixture(scope="module")
def doc(small_kilt, tiny_bert, tiny_llama, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out") / "quality.json"
    work = out.parent / "work"
    code = main(["benchmark-quality", str(small_kilt), "--out", str(out), "--work-dir", str(work), "--quiet",
                 "--systems", ",".join(SYSTEMS), "--encoder", str(tiny_bert), "--cross-encoder", str(tiny_bert),
                 "--llm", str(tiny_llama), "--k", "20", "--rerank-k", "5", "--rerank-queries", "3",
                 "--steps", "3", "--per-task-batch-size", "4", "--reranker-steps", "2", "--cross-encoder-steps", "2",
                 "--reranker-batch-size", "2", "--reranker-group-size", "3"])
    assert code == 0
    return json.loads(out.read_text())


def test_the_document_has_every_system_task_and_metric(doc, small_kilt):
    assert set(doc) >= {"machine", "data", "config", "systems", "significance"}
    assert doc["data"]["tasks"] == TASKS
    assert list(doc["systems"]) == SYSTEMS
    for name, result in doc["systems"].items():
        assert set(result["per_task"]) == set(TASKS)
        for task, metrics in result["per_task"].items():
            dev = len(read_task_file(small_kilt / f"{task}-dev-kilt.jsonl"))
            assert metrics["n"] == (3 if "+" in name else dev)
            for metric in ("Rprec", "recall@5", "success_rate@5"):
                assert 0.0 <= metrics[metric] <= 1.0, (name, task, metric)
        mean = sum(m["Rprec"] for m in result["per_task"].values()) / len(TASKS)
        assert result["avg"]["Rprec"] == pytest.approx(mean)
        assert result["seconds"] >= 0


def test_bm25_is_a_real_measurement_far_above_chance(doc):
    chance = 1 / 82
    assert doc["systems"]["bm25"]["avg"]["Rprec"] > 20 * chance


def test_the_table_and_chart_are_written_beside_the_json(doc, tmp_path_factory):
    out = Path(doc["config"]["work_dir"]).parent
    table = (out / "quality.md").read_text()
    assert table.splitlines()[0].startswith("| system | fever Rprec")
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_a_second_run_reuses_finished_stages(doc, small_kilt, tiny_bert):
    work = Path(doc["config"]["work_dir"])
    stamp = work / "dense" / "zero-shot" / "stage.json"
    before = stamp.read_text()
    again = Experiment(_config(small_kilt, work, encoder=str(tiny_bert)), progress=False).run()
    assert stamp.read_text() == before
    assert again["systems"]["zero-shot"]["per_task"] == doc["systems"]["zero-shot"]["per_task"]


def test_other_dev_queries_in_the_same_format_are_read_as_they_are(small_kilt, tmp_path, mini_kilt):
    data = tmp_path / "data"
    shutil.copytree(small_kilt, data)
    shutil.copy(mini_kilt / "hotpotqa-dev-kilt.jsonl", data / "nq-dev-kilt.jsonl")  # other queries, same shape
    result = Experiment(_config(data, tmp_path / "work", systems=["bm25"]), progress=False).run()
    assert result["systems"]["bm25"]["per_task"]["nq"]["n"] == len(read_task_file(data / "nq-dev-kilt.jsonl"))


def test_a_missing_knowledge_source_is_a_clear_error(small_kilt, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(small_kilt / "nq-dev-kilt.jsonl", data)
    assert main(["benchmark-quality", str(data), "--out", str(tmp_path / "o.json")]) == 2
    assert "no knowledge_source.jsonl or knowledge_source.jsonl.gz" in capsys.readouterr().err


def test_provenance_pages_absent_from_the_knowledge_source_are_counted(small_kilt, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_kilt, data)
    lines = (data / "knowledge_source.jsonl").read_text().splitlines()
    gold = read_task_file(data / "nq-dev-kilt.jsonl")[0].gold_pages[0]
    kept = [line for line in lines if json.loads(line)["wikipedia_id"] != gold]
    (data / "knowledge_source.jsonl").write_text("\n".join(kept) + "\n")
    result = Experiment(_config(data, tmp_path / "work", systems=["bm25"]), progress=False).run()
    warnings = result["data"]["warnings"]
    assert any("nq-dev-kilt.jsonl" in w and "provenance page(s) are absent" in w for w in warnings)


def test_an_empty_dev_file_is_an_error_naming_it(small_kilt, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_kilt, data)
    (data / "wow-dev-kilt.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"wow-dev-kilt\.jsonl: empty task file"):
        Experiment(_config(data, tmp_path / "work", systems=["bm25"]), progress=False).run()


def test_unknown_systems_and_task_files_are_named(small_kilt, tmp_path):
    with pytest.raises(ValueError, match="unknown system 'dpr'"):
        Experiment(_config(small_kilt, tmp_path / "w", systems=["dpr"]), progress=False).run()
    with pytest.raises(ValueError, match="unknown reranker 'monot5'"):
        Experiment(_config(small_kilt, tmp_path / "w", systems=["bm25+monot5"]), progress=False).run()
    data = tmp_path / "data"
    shutil.copytree(small_kilt, data)
    shutil.copy(data / "nq-dev-kilt.jsonl", data / "squad-dev-kilt.jsonl")
    with pytest.warns(UserWarning, match=r"squad-dev-kilt\.jsonl: unknown KILT task 'squad'"):
        Experiment(_config(data, tmp_path / "w2", systems=["bm25"]), progress=False)


def test_the_fine_tuned_systems_really_trained(doc):
    work = Path(doc["config"]["work_dir"])
    for name, tasks in (("naive", TASKS), ("taco", TASKS), ("single-nq", ["nq"])):
        log = [json.loads(line) for line in (work / "train" / name / "run" / "train_log.jsonl").read_text().splitlines()]
        assert [row["step"] for row in log] == [1, 2, 3], name
    for name in ("taco+cross-encoder", "taco+qpeft-a"):
        assert (work / "rerankers" / name / "train" / "final" / "reranker").is_dir()


def test_significance_pairs_taco_with_naive_and_each_reranker_with_its_retriever(doc):
    pairs = {(row["a"], row["b"], row["task"]) for row in doc["significance"]}
    for a, b in (("taco", "naive"), ("taco+cross-encoder", "taco"), ("taco+qpeft-a", "taco")):
        assert {(a, b, t) for t in TASKS + ["all", "macro"]} <= pairs
    for row in doc["significance"]:
        assert 0.0 < row["p_randomization"] <= 1.0 and 0.0 <= row["p_ttest"] <= 1.0
        if "+" in row["a"]:  # reranked systems ran 3 dev queries per task
            assert row["n"] == (3 * len(TASKS) if row["task"] in ("all", "macro") else 3)


def test_the_macro_test_compares_the_mean_over_tasks_of_the_shared_queries(doc):
    rows = {(row["a"], row["b"], row["task"]): row for row in doc["significance"]}
    for (a, b, task), row in rows.items():
        if task == "macro":
            assert row["diff"] == pytest.approx(sum(rows[(a, b, t)]["diff"] for t in TASKS) / len(TASKS))
    taco, naive = doc["systems"]["taco"]["avg"]["Rprec"], doc["systems"]["naive"]["avg"]["Rprec"]
    assert rows[("taco", "naive", "macro")]["diff"] == pytest.approx(taco - naive)  # the same queries: the avgs
