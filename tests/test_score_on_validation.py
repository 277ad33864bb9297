"""`score_on: validation`: settings are chosen on held-out training queries, grouped, without
reading the dev files."""
from __future__ import annotations

import json
import shutil

import pytest

from kilt.io import read_task_file
from kilt.tasks import query_group
from multitask_retriever.experiment import Experiment, ExperimentConfig


@pytest.fixture()
def data(mini_kilt, tmp_path):
    """nq and wow (three turns per conversation); the dev files are unreadable garbage."""
    out = tmp_path / "kilt"
    out.mkdir()
    shutil.copy(mini_kilt / "knowledge_source.jsonl", out)
    shutil.copy(mini_kilt / "nq-train-kilt.jsonl", out)
    rows = [json.loads(line) for line in (mini_kilt / "wow-train-kilt.jsonl").read_text().splitlines()]
    turns = [{**r, "id": f"{r['id'].rsplit('_', 1)[0]}_{t}", "input": f"{r['input']} ({t})"} for r in rows for t in range(3)]
    (out / "wow-train-kilt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in turns))
    for task in ("nq", "wow"):
        (out / f"{task}-dev-kilt.jsonl").write_text("not json\n")
    return out


def _experiment(data, work, **overrides) -> Experiment:
    return Experiment(ExperimentConfig(data_dir=str(data), work_dir=str(work), systems=["bm25"], k=20,
                                       score_on="validation", validation_split=0.3, **overrides), progress=False)


def test_systems_are_scored_on_held_out_training_queries_and_never_on_dev(data, tmp_path):
    experiment = _experiment(data, tmp_path / "work")
    doc = experiment.run()
    for task in ("nq", "wow"):
        train = read_task_file(experiment.task_files[task]["train"])
        held = read_task_file(experiment.task_files[task]["dev"])
        everything = read_task_file(data / f"{task}-train-kilt.jsonl")
        assert sorted(e.id for e in train + held) == sorted(e.id for e in everything)
        assert not {query_group(e.id, e.meta, task) for e in train} & {query_group(e.id, e.meta, task) for e in held}
        assert doc["systems"]["bm25"]["per_task"][task]["n"] == len(held)


def test_the_split_files_are_not_rewritten_by_a_second_run(data, tmp_path):
    first = _experiment(data, tmp_path / "work")
    stamps = {t: first.task_files[t]["dev"].stat().st_mtime_ns for t in ("nq", "wow")}
    second = _experiment(data, tmp_path / "work")
    assert {t: second.task_files[t]["dev"].stat().st_mtime_ns for t in ("nq", "wow")} == stamps


@pytest.mark.parametrize("field, value, message", [("score_on", "test", "score_on must be one of dev, validation"),
                                                   ("validation_split", 1.0, r"validation_split must be in \(0, 1\)")])
def test_bad_values_are_refused(data, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(data_dir=str(data), **{field: value})
