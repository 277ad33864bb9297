"""The index each dense retriever of `mtr benchmark-quality` is searched through: set by the
experiment's `index` section (flat unless set), keyed only when set, and freed after the last
system that searches it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import kilt_folder
from multitask_retriever.cli import main
from multitask_retriever.experiment import Experiment, ExperimentConfig
from multitask_retriever.experiment.config import IndexSection
from multitask_retriever.indexing import Index


@pytest.fixture(scope="module")
def small_kilt(mini_kilt, tmp_path_factory) -> Path:
    return kilt_folder(mini_kilt, tmp_path_factory.mktemp("small_kilt"), ["fever", "nq"])


def _stage(work: Path) -> tuple[str, str]:
    """(the zero-shot index stage's key, the type of the index it saved)."""
    folder = work / "dense" / "zero-shot"
    key = json.loads((folder / "stage.json").read_text())["key"]
    return key, Index.load(folder / "index").config.index_type


def test_the_index_section_chooses_the_index_type_and_enters_the_stage_key(small_kilt, tiny_bert, tmp_path):
    work = tmp_path / "work"
    common = ["benchmark-quality", str(small_kilt), "--work-dir", str(work), "--quiet", "--systems", "zero-shot",
              "--encoder", str(tiny_bert), "--k", "10"]
    assert main([*common, "--out", str(tmp_path / "flat.json")]) == 0
    flat_key, flat_type = _stage(work)
    assert main([*common, "--out", str(tmp_path / "hnsw.json"), "--index-index-type", "hnsw"]) == 0
    hnsw_key, hnsw_type = _stage(work)
    assert (flat_type, hnsw_type) == ("flat", "hnsw")
    assert hnsw_key != flat_key
    assert json.loads((tmp_path / "hnsw.json").read_text())["config"]["index"]["index_type"] == "hnsw"


def test_an_unknown_index_type_is_refused_before_any_work(small_kilt, tmp_path):
    with pytest.raises(ValueError, match="index_type"):
        ExperimentConfig(data_dir=str(small_kilt), index=IndexSection(index_type="annoy"))


def test_each_index_is_freed_after_the_last_system_that_searches_it(small_kilt, tiny_bert, tmp_path, monkeypatch):
    experiment = Experiment(ExperimentConfig(data_dir=str(small_kilt), work_dir=str(tmp_path / "work"), k=10,
                                             systems=["zero-shot", "bm25"], encoder=str(tiny_bert)), progress=False)
    events: list[str] = []
    system, release = experiment.system, experiment.build.release
    monkeypatch.setattr(experiment, "system", lambda name: (events.append(f"score {name}"), system(name))[1])
    monkeypatch.setattr(experiment.build, "release", lambda name: (events.append(f"free {name}"), release(name))[1])
    experiment.run()
    assert events == ["score zero-shot", "free zero-shot", "score bm25", "free bm25"]
    assert experiment.build.retrievers._retrievers == {}
