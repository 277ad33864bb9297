"""Multi-process runs on CPUs: two real processes in one gloo process group, set up through the
environment as `accelerate launch --cpu` sets it up. Encoding splits the shards and mining splits
the queries, each writing exactly what one process writes; training keeps one model on both
processes from one memory-mapped examples file; the process group gets the long timeout."""
from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from kilt.passages import write_passages
from multitask_retriever.data import search_batches
from multitask_retriever.distributed import DEFAULT_TIMEOUT, distributed_state, process_group_kwargs
from multitask_retriever.encoding import encode_corpus, shard_paths

TASKS = ["nq", "fever", "hotpotqa"]  # one search batch each: process 0 searches nq, process 1 the others


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world: int, port: int, target: Callable[..., None], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), ACCELERATE_USE_CPU="true",
                      OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    target(*args)


def _launch(target: Callable[..., None], *args: Any) -> None:
    """Run target(*args) in 2 processes of one gloo process group, one thread each."""
    mp.spawn(_process, args=(2, _free_port(), target, args), nprocs=2)


@contextmanager
def _one_thread() -> Iterator[None]:
    """This process computes as a launched one does (float results depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def passage_file(mini_kilt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


# --------------------------------------------------------------------------- encoding
class _Recording:
    """An encoder that records the ids of the passages it encodes."""

    def __init__(self, model: Path):
        from multitask_retriever.encoder import DualEncoder

        self.encoder = DualEncoder.from_pretrained(model)
        self.config, self.dim, self.encoded = self.encoder.config, self.encoder.dim, []

    def encode_passages(self, passages, batch_size=64):
        self.encoded += [p.id for p in passages]
        return self.encoder.encode_passages(passages, batch_size=batch_size)


def _encode(model: Path, passage_file: Path, out: Path) -> None:
    encoder = _Recording(model)
    encode_corpus(encoder, passage_file, out / "shards", shard_size=20, batch_size=4, progress=False)
    (out / f"encoded-{distributed_state().process_index}.json").write_text(json.dumps(encoder.encoded))


def _shards(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    count = json.loads((folder / "manifest.json").read_text())["num_shards"]
    return [(np.load(shard_paths(folder, i)[1]), np.load(shard_paths(folder, i)[0])) for i in range(count)]


def test_two_processes_encode_alternate_shards_into_what_one_process_writes(tiny_bert, passage_file, tmp_path):
    with _one_thread():
        _encode(tiny_bert, passage_file, tmp_path / "one")
    _launch(_encode, tiny_bert, passage_file, tmp_path / "two")

    one, two = _shards(tmp_path / "one" / "shards"), _shards(tmp_path / "two" / "shards")
    assert len(one) == len(two) >= 3
    for (ids, vectors), (ids2, vectors2) in zip(one, two):
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_array_equal(vectors2, vectors)
    for rank in (0, 1):
        encoded = json.loads((tmp_path / "two" / f"encoded-{rank}.json").read_text())
        assert encoded == [int(i) for ids, _ in one[rank::2] for i in ids]
    assert json.loads((tmp_path / "two" / "shards" / "manifest.json").read_text())["complete"]


# --------------------------------------------------------------------------- mining
def _mine(model: Path, passage_file: Path, data_dir: Path, out: Path) -> None:
    from multitask_retriever.rounds import mine_negatives

    config = SimpleNamespace(data=SimpleNamespace(dir=str(data_dir), tasks=TASKS, negative_depth=10,
                                                  negatives_per_query=3, max_train_queries=0),
                             progress=False)  # what mine_negatives reads of a TrainConfig
    mine_negatives(model, out, passage_file, config)


def test_two_processes_mine_the_examples_file_one_process_writes(tiny_bert, passage_file, mini_kilt, tmp_path):
    one, two = tmp_path / "one" / "negatives.jsonl", tmp_path / "two" / "negatives.jsonl"
    one.parent.mkdir()
    two.parent.mkdir()
    with _one_thread():
        _mine(tiny_bert, passage_file, mini_kilt, one)
    _launch(_mine, tiny_bert, passage_file, mini_kilt, two)

    assert two.read_bytes() == one.read_bytes()
    examples = [json.loads(line) for line in one.read_text().splitlines()]
    assert {e["task"] for e in examples} == set(TASKS) and all(len(e["negatives"]) == 3 for e in examples)
    record = "negatives.jsonl.inputs.json"
    assert (two.parent / record).read_bytes() == (one.parent / record).read_bytes()
    assert sorted(p.name for p in two.parent.iterdir()) == ["negatives.jsonl", record]  # no shards, parts, index


def test_search_batches_are_split_into_contiguous_runs_in_task_order():
    counts = {"nq": 5, "fever": 2, "trex": 3}
    every = [("nq", 0), ("nq", 2), ("nq", 4), ("fever", 0), ("trex", 0), ("trex", 2)]
    assert search_batches(counts, 2) == every
    assert [search_batches(counts, 2, (p, 4)) for p in range(4)] == [every[:1], every[1:3], every[3:4], every[4:]]
    assert [search_batches({"nq": 1}, 2, (p, 2)) for p in range(2)] == [[], [("nq", 0)]]  # a run may be empty
    with pytest.raises(ValueError, match="part"):
        search_batches(counts, 2, (2, 2))


# --------------------------------------------------------------------------- training
def _train(model: Path, passage_file: Path, data_dir: Path, out: Path) -> None:
    import hashlib

    from multitask_retriever.trainer import MultitaskTrainer, TrainConfig, TrainDataConfig, TrainModelConfig
    from multitask_retriever.training_loop import OptimizerConfig

    config = TrainConfig(model=TrainModelConfig(name_or_path=str(model), query_max_length=32, passage_max_length=64),
                         data=TrainDataConfig(dir=str(data_dir), passages=str(passage_file), tasks=TASKS[:2],
                                              negatives="none", per_task_batch_size=2, n_negatives=1),
                         optim=OptimizerConfig(lr=2e-3, steps=3, warmup_steps=1), method="taco", seed=5,
                         output_dir=str(out), progress=False)
    trainer = MultitaskTrainer(config)
    trainer.train()
    _, examples = trainer.data()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.encoder().state_dict().items()):
        digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    (out / f"trained-{distributed_state().process_index}.json").write_text(json.dumps(
        {"weights": digest.hexdigest(), "examples": {t: type(e).__name__ for t, e in examples.items()}}))


def test_two_processes_train_one_model_from_one_mapped_examples_file(tiny_bert, passage_file, mini_kilt, tmp_path):
    """Into an existing output folder, whose checkpoint lookup is the first to need the process state."""
    _launch(_train, tiny_bert, passage_file, mini_kilt, tmp_path)

    trained = [json.loads((tmp_path / f"trained-{rank}.json").read_text()) for rank in (0, 1)]
    assert trained[0] == trained[1]  # both processes end with the same weights
    assert trained[0]["examples"] == {"nq": "MappedExamples", "fever": "MappedExamples"}
    state = torch.load(tmp_path / "final" / "trainer_state.pt", weights_only=True)
    assert (state["step"], state["data"]["num_processes"]) == (3, 2)  # one run of two processes
    assert [p.name for p in tmp_path.glob("training_examples.arrays*")] == ["training_examples.arrays"]


# --------------------------------------------------------------------------- timeout
def _group_timeout(out: Path, how: str) -> None:
    if how == "distributed_state":
        distributed_state(timedelta(hours=3))
    elif how == "trainer":
        from multitask_retriever.training_loop import _accelerator

        _accelerator("no")
    else:
        from accelerate import Accelerator

        Accelerator(kwargs_handlers=[process_group_kwargs(timedelta(hours=3))])
    from torch.distributed import distributed_c10d

    state = distributed_state()  # the first creation fixed the timeout
    backend = distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    (out / f"timeout-{state.process_index}.json").write_text(json.dumps(
        [backend.options._timeout.total_seconds(), state.num_processes]))


@pytest.mark.parametrize("how, hours", [("distributed_state", 3), ("accelerator", 3), ("trainer", 6)])
def test_the_timeout_reaches_the_process_group(how, hours, tmp_path):
    _launch(_group_timeout, tmp_path, how)
    assert [json.loads((tmp_path / f"timeout-{r}.json").read_text()) for r in (0, 1)] == [[hours * 3600, 2]] * 2


def test_the_default_timeout_is_six_hours():
    assert DEFAULT_TIMEOUT == timedelta(hours=6)
    assert process_group_kwargs().to_kwargs() == {"timeout": timedelta(hours=6)}
