"""Splits of training queries keep each group on one side: a conversation (wow), a document
(entity linking) or a subject (trex) is never both trained on and validated on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilt.io import KiltExample, read_task_file
from kilt.tasks import query_group
from multitask_retriever.examples import read_training_examples
from multitask_retriever.experiment import Experiment, ExperimentConfig, TrainSection
from multitask_retriever.rerank.fusion import split_validation


@pytest.mark.parametrize("query_id, meta, task, group", [
    ("aida-12-3", {"group": "testb:12"}, "aidayago2", "testb:12"),
    ("trex-1", {"sub_uri": "Q42"}, "trex", "Q42"),
    ("trex-1", {"sub_uri": "Q42", "group": "Q7"}, "trex", "Q7"),
    ("56efc94d_3", {}, "wow", "56efc94d"),
    ("56efc94d_3", {}, "nq", "56efc94d_3"),
    ("fever-9", {"sub_uri": "Q42"}, "fever", "fever-9"),
    ("abc", {"group": ""}, "wow", "abc"),
])
def test_a_querys_group(query_id, meta, task, group):
    assert query_group(query_id, meta, task) == group


def _conversations(n: int, turns: int) -> list[KiltExample]:
    return [KiltExample(f"conv{c}_{t}", f"turn {t} of {c}") for c in range(n) for t in range(turns)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_split_by_group_never_puts_a_conversation_on_both_sides(seed):
    examples = _conversations(20, 4)
    train, validation = split_validation(examples, 0.25, seed=seed, key=lambda e: query_group(e.id, e.meta, "wow"))
    groups = [{query_group(e.id, e.meta, "wow") for e in part} for part in (train, validation)]
    assert not groups[0] & groups[1]
    assert len(groups[1]) == 5 and len(validation) == 20


def _wow_folder(mini_kilt: Path, out: Path) -> Path:
    """The fixture's wow task with three turns per conversation (ids <conversation>_<turn>)."""
    out.mkdir()
    (out / "knowledge_source.jsonl").write_bytes((mini_kilt / "knowledge_source.jsonl").read_bytes())
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in (mini_kilt / f"wow-{split}-kilt.jsonl").read_text().splitlines()]
        turns = [{**r, "id": f"{r['id'].rsplit('_', 1)[0]}-{split}_{t}", "input": f"{r['input']} ({t})"}
                 for r in rows for t in range(3)]
        (out / f"wow-{split}-kilt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in turns))
    return out


def test_the_fusion_validation_split_keeps_conversations_together(mini_kilt, tmp_path):
    data = _wow_folder(mini_kilt, tmp_path / "kilt")
    experiment = Experiment(ExperimentConfig(data_dir=str(data), work_dir=str(tmp_path / "work"),
                                             systems=["bm25"], fusion_validation=0.3), progress=False)
    train, validation = experiment.build.train_queries("wow"), experiment.build.validation_queries("wow")
    assert validation and train
    sides = [{query_group(e.id, e.meta, "wow") for e in part} for part in (train, validation)]
    assert not sides[0] & sides[1]
    assert {len([e for e in validation if query_group(e.id, e.meta, "wow") == g]) for g in sides[1]} == {3}


def test_held_out_fusion_queries_are_left_out_of_retriever_training(mini_kilt, tiny_bert, tmp_path):
    data = _wow_folder(mini_kilt, tmp_path / "kilt")
    experiment = Experiment(ExperimentConfig(
        data_dir=str(data), work_dir=str(tmp_path / "work"), systems=["naive"], encoder=str(tiny_bert), k=20,
        train=TrainSection(steps=1, per_task_batch_size=2), fusion_validation=0.3, fusion_holdout_retriever=True), progress=False)
    experiment.run()
    trained = read_task_file(tmp_path / "work" / "train-data" / "queries" / "wow-train-kilt.jsonl")
    assert {e.id for e in trained} == {e.id for e in experiment.build.train_queries("wow")}
    assert not {e.id for e in trained} & {e.id for e in experiment.build.validation_queries("wow")}
    used = {e.qid for e in read_training_examples(tmp_path / "work" / "train-data" / "examples.jsonl")["wow"]}
    assert used and used <= {e.id for e in trained}
