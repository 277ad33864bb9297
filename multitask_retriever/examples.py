"""Training examples: the JSONL file `mtr mine-negatives` writes, and a memory-mapped view of it.

Full KILT has about 2.9M training queries with 30 hard negatives each: as Python objects
that is gigabytes per training process. `map_training_examples` writes the file once as flat
arrays (ids, offsets, UTF-8 text) and every process maps them read-only, so the operating
system keeps one copy in its page cache whatever the number of processes; an example is
built only when a batch asks for it.
"""
from __future__ import annotations

import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, overload

import numpy as np

from kilt.io import KiltFormatError, iter_jsonl
from safeio.atomic import atomic_directory, atomic_write
from safeio.identity import file_version
from safeio.text import read_json_object


@dataclass(frozen=True)
class TrainingExample:
    """One training query: passage ids of its positives (best first) and hard negatives (rank order)."""

    task: str
    qid: str
    query: str
    positives: tuple[int, ...]
    negatives: tuple[int, ...]
    gold_pages: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "id": self.qid, "query": self.query, "positives": list(self.positives),
                "negatives": list(self.negatives), "gold_pages": list(self.gold_pages)}


def write_training_examples(path: str | Path, examples: Mapping[str, Sequence[TrainingExample]]) -> int:
    """Write examples as JSONL (`mtr mine-negatives` output), atomically; returns the count."""
    n = 0
    with atomic_write(path) as f:
        for task_examples in examples.values():
            for example in task_examples:
                f.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
                n += 1
    return n


def _examples_of(path: Path) -> Iterator[TrainingExample]:
    """Each example of a training-example file, checked; a bad line is a KiltFormatError naming it."""
    for line, row in iter_jsonl(path):
        try:
            example = TrainingExample(str(row["task"]), str(row["id"]), str(row["query"]),
                                      tuple(int(p) for p in row["positives"]),
                                      tuple(int(p) for p in row["negatives"]),
                                      tuple(str(p) for p in row["gold_pages"]))
        except (KeyError, TypeError, ValueError) as e:
            raise KiltFormatError(f"{path}:{line}: not a training example ({e!r})") from None
        if not example.positives:
            raise KiltFormatError(f"{path}:{line}: query {example.qid} has no positive")
        yield example


def _chosen(path: Path, per_task: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Any]:
    """`per_task` restricted to `tasks` (all when empty), in their order; missing tasks are an error."""
    missing = [t for t in tasks if t not in per_task]
    if missing:
        raise ValueError(f"{path}: no training examples for task(s) {', '.join(missing)}")
    if not per_task:
        raise KiltFormatError(f"{path}: empty training-example file")
    return {t: per_task[t] for t in (tasks or per_task)}


def read_training_examples(path: str | Path, tasks: Sequence[str] = ()) -> dict[str, list[TrainingExample]]:
    """Examples of a file written by `write_training_examples`, per task (only `tasks` if given)."""
    path = Path(path)
    out: dict[str, list[TrainingExample]] = {}
    for example in _examples_of(path):
        if not tasks or example.task in tasks:
            out.setdefault(example.task, []).append(example)
    return _chosen(path, out, tasks)


# --------------------------------------------------------------------------- memory-mapped
_FORMAT = 1
_MANIFEST = "manifest.json"
_TEXTS = ("qid", "query", "gold")
_INTS = ("positives", "negatives")


def _ints(path: Path) -> np.ndarray:
    """The int64 values of a raw file, memory-mapped (an empty file maps to an empty array)."""
    if path.stat().st_size == 0:
        return np.empty(0, dtype=np.int64)
    return np.memmap(path, dtype=np.int64, mode="r")


def _bytes(path: Path) -> np.ndarray | bytes:
    return np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else b""


class _Columns:
    """The arrays of one mapped example file: per field, its values and each row's offsets."""

    def __init__(self, folder: Path):
        self.values = {name: _bytes(folder / f"{name}.bin") for name in _TEXTS}
        self.values.update({name: _ints(folder / f"{name}.bin") for name in _INTS})
        self.offsets = {name: np.load(folder / f"{name}.offsets.npy", mmap_mode="r") for name in (*_TEXTS, *_INTS)}

    def span(self, name: str, row: int) -> Any:
        offsets = self.offsets[name]
        return self.values[name][int(offsets[row]):int(offsets[row + 1])]

    def text(self, name: str, row: int) -> str:
        return bytes(self.span(name, row)).decode("utf-8")

    def counts(self, name: str, rows: np.ndarray) -> np.ndarray:
        offsets = self.offsets[name]
        return np.asarray(offsets[rows + 1]) - np.asarray(offsets[rows])


class MappedExamples(Sequence[TrainingExample]):
    """The examples of one task in a mapped file, built on access; slicing gives another view."""

    def __init__(self, columns: _Columns, task: str, rows: np.ndarray):
        self._columns, self.task, self._rows = columns, task, rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> TrainingExample: ...

    @overload
    def __getitem__(self, index: slice) -> "MappedExamples": ...

    def __getitem__(self, index: int | slice) -> TrainingExample | "MappedExamples":
        if isinstance(index, slice):
            return MappedExamples(self._columns, self.task, self._rows[index])
        row = int(self._rows[index])
        c = self._columns
        return TrainingExample(self.task, c.text("qid", row), c.text("query", row),
                               tuple(c.span("positives", row).tolist()), tuple(c.span("negatives", row).tolist()),
                               tuple(json.loads(c.text("gold", row))))

    def __eq__(self, other: object) -> bool:
        """Equal to any list, tuple or view of the same examples in the same order."""
        if not isinstance(other, (MappedExamples, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def mean_counts(self) -> tuple[float, float]:
        """Mean positives and hard negatives per query, from the offsets alone."""
        rows = np.asarray(self._rows)
        return (float(self._columns.counts("positives", rows).mean()),
                float(self._columns.counts("negatives", rows).mean()))


def _write_columns(path: Path, folder: Path) -> dict[str, list[int]]:
    """Write the examples of `path` as columns into `folder`, one line at a time; their rows per task."""
    files = {name: open(folder / f"{name}.bin", "wb") for name in (*_TEXTS, *_INTS)}
    offsets = {name: array("q", [0]) for name in files}
    rows: dict[str, array] = {}
    try:
        for row, example in enumerate(_examples_of(path)):
            fields = {"qid": example.qid.encode(), "query": example.query.encode(),
                      "gold": json.dumps(example.gold_pages, ensure_ascii=False).encode(),
                      "positives": np.asarray(example.positives, dtype=np.int64).tobytes(),
                      "negatives": np.asarray(example.negatives, dtype=np.int64).tobytes()}
            for name, data in fields.items():
                files[name].write(data)
                offsets[name].append(offsets[name][-1] + (len(data) // 8 if name in _INTS else len(data)))
            rows.setdefault(example.task, array("q")).append(row)
    finally:
        for f in files.values():
            f.close()
    for name, values in offsets.items():
        np.save(folder / f"{name}.offsets.npy", np.frombuffer(values, dtype=np.int64))
    for i, task_rows in enumerate(rows.values()):
        np.save(folder / f"rows-{i:04d}.npy", np.frombuffer(task_rows, dtype=np.int64))
    return {task: [i, len(task_rows)] for i, (task, task_rows) in enumerate(rows.items())}


def map_training_examples(path: str | Path, folder: str | Path,
                          tasks: Sequence[str] = ()) -> dict[str, MappedExamples]:
    """The examples of the file `path` per task (only `tasks` if given), memory-mapped from
    `folder`: written there on first use (atomically) and again whenever `path` changes."""
    path, folder = Path(path), Path(folder)
    if folder.resolve() == path.resolve() or path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{folder}: would write over the training examples it maps ({path})")
    source = file_version(path)
    manifest_path = folder / _MANIFEST
    manifest = read_json_object(manifest_path) if manifest_path.is_file() else {}
    if manifest.get("format") != _FORMAT or manifest.get("source") != source:
        with atomic_directory(folder) as tmp:
            manifest = {"format": _FORMAT, "source": source, "tasks": _write_columns(path, tmp)}
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    columns = _Columns(folder)
    per_task = {task: MappedExamples(columns, task, np.load(folder / f"rows-{i:04d}.npy", mmap_mode="r"))
                for task, (i, _) in manifest["tasks"].items()}
    return _chosen(path, per_task, tasks)


def example_counts(examples: Mapping[str, Sequence[TrainingExample]]) -> dict[str, dict[str, float]]:
    """Per task: queries, mean positives, mean hard negatives (for logs)."""
    out = {}
    for task, task_examples in examples.items():
        if isinstance(task_examples, MappedExamples):
            positives, negatives = task_examples.mean_counts()
        else:
            positives = float(np.mean([len(x.positives) for x in task_examples]))
            negatives = float(np.mean([len(x.negatives) for x in task_examples]))
        out[task] = {"queries": len(task_examples), "positives": positives, "negatives": negatives}
    return out
