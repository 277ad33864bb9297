"""Dense hard-negative mining shared by the processes of a launch (`accelerate launch`).

The main process builds one flat index over the encoded shards and saves it beside them; every
process loads it memory-mapped (one copy in the page cache) and searches its contiguous share of
the training queries' search batches into a part file; the main process joins the parts, in
process order, into the examples file: byte for byte what one process writes alone.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from safeio.atomic import atomic_write

from .data import build_training_examples, build_unless_cached
from .examples import write_training_examples
from .indexing import Index, IndexConfig

if TYPE_CHECKING:
    from accelerate import PartialState

    from .encoding import QueryEncoder

#: the folder, inside the shard folder, of the index the processes share
INDEX_DIR = "index"


def shared_flat_index(shards: Path, state: PartialState, progress: bool = True) -> Index:
    """The flat index of the shard folder `shards` for this process: built in memory when it is
    alone; else built and saved into shards/INDEX_DIR by the main process, then loaded
    memory-mapped by every process."""
    config = IndexConfig(index_type="flat")
    if state.num_processes == 1:
        return Index.from_shards(shards, config, progress=progress)
    folder = shards / INDEX_DIR
    if state.is_main_process:
        Index.from_shards(shards, config, progress=progress).save(folder)
    state.wait_for_everyone()
    return Index.load(folder, mmap=True)


def part_path(folder: Path, process: int) -> Path:
    """The part file of the examples mined by process number `process`."""
    return folder / f"examples-part-{process:05d}.jsonl"


def join_files(parts: list[Path], path: Path) -> None:
    """Write the concatenation of `parts`, in order, to `path` atomically."""
    with atomic_write(path, mode="wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out)


def mine_examples(encoder: QueryEncoder, shards: Path, passage_file: Path, task_files: Mapping[str, Path],
                  out: Path, inputs: dict[str, Any], state: PartialState, depth: int, keep: int,
                  max_queries: int, progress: bool = True) -> None:
    """Write `out` (and its inputs record, `build_unless_cached`): the training examples of
    `task_files` with the top-`depth` hits of `encoder` in a flat index over `shards` as hard
    negatives (at most `keep`). Each process mines its part; every process returns once `out`
    is written. The part files, kept in `shards`, are removed."""
    from kilt.passages import PassageStore

    from .retriever import Retriever

    progress = progress and state.is_local_main_process
    retriever = Retriever(encoder, shared_flat_index(shards, state, progress),
                          PassageStore(passage_file, progress=progress))
    write_training_examples(part_path(shards, state.process_index), build_training_examples(
        task_files, retriever.passages, retriever, depth=depth, keep=keep, max_queries=max_queries,
        progress=progress, part=(state.process_index, state.num_processes)))
    state.wait_for_everyone()
    if state.is_main_process:
        parts = [part_path(shards, p) for p in range(state.num_processes)]
        build_unless_cached(out, inputs, lambda path: join_files(parts, path))
        for part in parts:
            part.unlink()
    state.wait_for_everyone()
