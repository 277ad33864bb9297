"""Training data for the dual encoder: KILT task files + a passage file -> per-task batches.

Each training query gets positives (passages of its provenance pages: the one holding the
provenance paragraph, else one containing an answer, else the page's first passage) and
ranked hard negatives (BM25, or a previous model's top hits: ANCE-style rounds), never
from a gold page. Examples keep passage ids only; passage text is read from the
`PassageStore` when a batch is built. A batch is a pure function of (seed, task, step,
process), so resuming a run needs nothing but the step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from kilt.hits import SearchBackend
from kilt.io import KiltExample, read_task_file
from kilt.passages import Passage, PassageStore, write_passages
from kilt.tasks import find_task_files, get_task
from safeio.atomic import atomic_write
from safeio.identity import file_version

from .examples import TrainingExample, map_training_examples, write_training_examples

log = logging.getLogger("mtr.data")

#: passages asked for per query when mining hard negatives
DEFAULT_DEPTH = 100
#: hard negatives kept per query (a batch samples `n_negatives` of them)
DEFAULT_KEEP = 30
_RANDOM_TRIES = 1000
#: how a batch takes each query's hard negatives: sampled from its kept ones, or its top-ranked
NEGATIVE_SAMPLING = ("sample", "top")


def task_train_files(data_dir: str | Path, tasks: Sequence[str] = (), split: str = "train") -> dict[str, Path]:
    """{task: path} of the `split` files in a KILT folder; `tasks` defaults to every task with one.

    Unknown task names and tasks without a `split` file are errors naming the folder.
    """
    for task in tasks:
        get_task(task)  # ValueError listing the known tasks
    found = find_task_files(data_dir)
    tasks = list(tasks) or [t for t, splits in found.items() if split in splits]
    missing = [t for t in tasks if split not in found.get(t, {})]
    if missing:
        raise FileNotFoundError(f"{data_dir}: no {split} file for task(s) {', '.join(missing)} "
                                f"(expected e.g. {get_task(missing[0]).files.get(split, '?')})")
    if not tasks:
        raise FileNotFoundError(f"{data_dir}: no <task>-{split}-kilt.jsonl files")
    return {t: found[t][split] for t in tasks}


def positive_passages(example: KiltExample, store: PassageStore, ranges: Mapping[str, range]) -> list[int]:
    """Positive passage ids of `example`, one per provenance entry (deduplicated, in order).

    For each provenance page (its passage ids in `ranges`, from `PassageStore.page_ranges`): the
    passage holding the provenance paragraph span, else the first passage containing an answer
    string (case-insensitive), else the first passage.
    """
    answers = [a.lower() for a in example.answers if len(a.strip()) > 1]
    chosen: list[int] = []
    for group in example.evidence:
        for prov in group:
            span = ranges.get(prov.wikipedia_id)
            if span is None:
                continue
            held = store.provenance_passage([prov], span)
            if held is not None:
                pick = held.id
            else:
                pick = next((p.id for p in store.get_many(list(span)) if any(a in p.text.lower() for a in answers)),
                            span[0])
            if pick not in chosen:
                chosen.append(pick)
    return chosen


# --------------------------------------------------------------------------- negatives
def build_training_examples(task_files: Mapping[str, str | Path], store: PassageStore,
                            negatives: str | SearchBackend = "bm25",
                            depth: int = DEFAULT_DEPTH, keep: int = DEFAULT_KEEP, max_queries: int = 0,
                            batch_size: int = 256, progress: bool = True,
                            part: tuple[int, int] = (0, 1)) -> dict[str, list[TrainingExample]]:
    """Training examples per task from KILT task files.

    `negatives`: "bm25" (build a BM25 index over the passages), "none" (random negatives
    only, drawn per batch), or a search backend such as a `BM25Retriever` or a dense
    `Retriever` (ANCE-style rounds). Hard negatives are the top-`depth` hits on
    no gold page, at most `keep`. Queries none of whose gold pages are in `store` are skipped
    (counted in a warning); a file left with no usable query is an error naming it.
    `part` (p, n): only the examples of the p-th of n contiguous runs of the search batches
    (`search_batches`), so that n processes each search a share; their outputs, written in
    order of p, are together what (0, 1) writes (the same batches are searched).
    """
    if depth < 1 or keep < 0 or max_queries < 0:
        raise ValueError(f"depth must be >= 1, keep and max_queries >= 0; got {depth}, {keep}, {max_queries}")
    usable = _usable_queries({task: Path(path) for task, path in task_files.items()}, store, max_queries)
    backend = _negatives_backend(negatives, store, progress)
    out: dict[str, list[TrainingExample]] = {}
    for task, start in tqdm(search_batches({t: len(u) for t, u in usable.items()}, batch_size, part),
                            desc="negatives", unit="batch", disable=not progress or backend is None):
        chunk = usable[task][start:start + batch_size]
        ranked = (backend.search([e.input for e, _ in chunk], task=task, k=depth)
                  if backend is not None else [[] for _ in chunk])
        task_out = out.setdefault(task, [])
        for (example, positives), hits in zip(chunk, ranked):
            gold = set(example.gold_pages)
            hard = [pid for pid in dict.fromkeys(h.passage_id for h in hits)
                    if store.page_id(pid) not in gold][:keep]
            task_out.append(TrainingExample(task, example.id, example.input, tuple(positives), tuple(hard),
                                            tuple(example.gold_pages)))
    return out


def search_batches(counts: Mapping[str, int], batch_size: int,
                   part: tuple[int, int] = (0, 1)) -> list[tuple[str, int]]:
    """(task, first query) of each batch of `batch_size` queries searched for `counts` queries
    per task, in task order; with `part` (p, n) only the p-th of n contiguous runs of them
    (as even as whole batches allow; a run may be empty)."""
    index, parts = part
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"part must be (p, n) with 0 <= p < n, got {part}")
    batches = [(task, start) for task, n in counts.items() for start in range(0, n, batch_size)]
    return batches[index * len(batches) // parts:(index + 1) * len(batches) // parts]


def _usable_queries(files: Mapping[str, Path], store: PassageStore,
                    max_queries: int) -> dict[str, list[tuple[KiltExample, list[int]]]]:
    """Each task's queries (the first `max_queries` if set) that have a positive in `store`,
    with their positives; warns of skipped queries, refuses a file left with none."""
    for task in files:
        get_task(task)
    kilt_examples = {}
    for task, path in files.items():
        examples = read_task_file(path)  # KiltFormatError naming the file when empty
        kilt_examples[task] = examples[:max_queries] if max_queries else examples
    ranges = store.page_ranges({p for ex in kilt_examples.values() for e in ex for p in e.gold_pages})
    out = {}
    for task, examples in kilt_examples.items():
        usable = []
        for example in examples:
            positives = positive_passages(example, store, ranges)
            if positives:
                usable.append((example, positives))
        if not usable:
            raise ValueError(f"{files[task]}: no training query has a provenance page in {store.path}")
        if len(usable) < len(examples):
            warnings.warn(f"{files[task]}: skipped {len(examples) - len(usable)} of {len(examples)} queries whose "
                          f"provenance pages are not in {store.path}", stacklevel=3)
        out[task] = usable
    return out


def _negatives_backend(negatives: str | SearchBackend, store: PassageStore, progress: bool) -> SearchBackend | None:
    """The search backend hard negatives come from: `negatives` itself, a BM25 index over
    `store` for "bm25", none for "none"."""
    if not isinstance(negatives, str):
        return negatives
    if negatives not in ("bm25", "none"):
        raise ValueError(f"negatives must be 'bm25', 'none' or a search backend, got {negatives!r}")
    from kilt.bm25 import BM25Retriever

    return BM25Retriever.build(store, progress=progress) if negatives == "bm25" else None


# --------------------------------------------------------------------------- a run's data
PASSAGES_NAME = "passages.jsonl"
EXAMPLES_NAME = "training_examples.jsonl"
#: the memory-mapped columns of the examples a run trains on
EXAMPLE_ARRAYS_NAME = "training_examples.arrays"
KNOWLEDGE_SOURCES = ("knowledge_source.jsonl", "knowledge_source.jsonl.gz", "kilt_knowledgesource.json")


def _inputs_record(path: Path) -> Path:
    return path.with_name(path.name + ".inputs.json")


def is_cached(path: Path, inputs: dict[str, Any]) -> bool:
    """Whether `path` exists and was built from `inputs` (as recorded by `build_unless_cached`)."""
    try:
        saved = json.loads(_inputs_record(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return path.is_file() and saved == json.loads(json.dumps(inputs))


def build_unless_cached(path: Path, inputs: dict[str, Any], build: Callable[[Path], Any]) -> None:
    """Run `build(path)` unless `path` exists and was built from `inputs` (recorded beside it
    in PATH.inputs.json), so a file left by a run on other inputs is never reused. `inputs`
    holds settings and the `safeio.identity.file_version` of each file it is built from."""
    record = _inputs_record(path)
    inputs = json.loads(json.dumps(inputs))
    if is_cached(path, inputs):
        return
    if path.exists():
        log.info("%s: built from other inputs; rebuilding it", path)
    record.unlink(missing_ok=True)
    build(path)
    with atomic_write(record) as f:
        json.dump(inputs, f, indent=1, sort_keys=True)


def prepare_training_data(output_dir: str | Path, data_dir: str | Path = "", passages: str | Path = "",
                          tasks: Sequence[str] = (), negatives: str = "bm25", depth: int = DEFAULT_DEPTH,
                          keep: int = DEFAULT_KEEP, max_queries: int = 0, progress: bool = True
                          ) -> tuple[PassageStore, dict[str, Sequence[TrainingExample]]]:
    """The passage store and per-task training examples of a training run in `output_dir`.

    Passages: the file `passages`, else DATA_DIR/knowledge_source.jsonl[.gz] chunked into
    OUTPUT_DIR/passages.jsonl. Examples: read from `negatives` when it names a file (from
    `mtr mine-negatives`), else built from DATA_DIR's train files with "bm25" or "none"
    (random-only) negatives into OUTPUT_DIR/training_examples.jsonl. Both files are rebuilt
    when their inputs (files, settings) differ from those recorded beside them. The examples
    are memory-mapped (`map_training_examples`, columns in OUTPUT_DIR/training_examples.arrays),
    so that the processes of a distributed run share one copy.
    """
    output_dir = Path(output_dir)
    if passages:
        passage_file = Path(passages)
    else:
        if not data_dir:
            raise ValueError("set passages (a file from `mtr chunk`) or data_dir")
        source = next((Path(data_dir) / n for n in KNOWLEDGE_SOURCES if (Path(data_dir) / n).is_file()), None)
        if source is None:
            raise FileNotFoundError(f"{data_dir}: no {' or '.join(KNOWLEDGE_SOURCES)}; set passages")
        passage_file = output_dir / PASSAGES_NAME
        build_unless_cached(passage_file, {"knowledge_source": file_version(source)},
                             lambda path: write_passages(source, path, progress=progress))
    store = PassageStore(passage_file, progress=progress)
    if negatives not in ("bm25", "none"):
        examples = map_training_examples(negatives, output_dir / EXAMPLE_ARRAYS_NAME, tasks)
    else:
        if not data_dir:
            raise ValueError("data_dir is required to build training examples")
        files = task_train_files(data_dir, tasks)
        cache = output_dir / EXAMPLES_NAME
        inputs = {"task_files": {t: file_version(f) for t, f in files.items()},
                  "passages": file_version(passage_file), "negatives": negatives, "depth": depth, "keep": keep,
                  "max_queries": max_queries}

        def build(path: Path) -> None:
            write_training_examples(path, build_training_examples(files, store, negatives, depth=depth, keep=keep,
                                                                  max_queries=max_queries, progress=progress))

        build_unless_cached(cache, inputs, build)
        examples = map_training_examples(cache, output_dir / EXAMPLE_ARRAYS_NAME, tasks)
    if max_queries:
        examples = {t: e[:max_queries] for t, e in examples.items()}
    return store, examples


# --------------------------------------------------------------------------- batches
@dataclass
class TaskBatch:
    """One task's mini-batch: each query's group is [positive, *negatives] in `passage_ids`
    (group-major), so query i's target is passage i * group_size. `exclude[i, j]` marks
    in-batch passages on query i's gold pages other than its own positive (false negatives)."""

    task: str
    qids: list[str]
    queries: list[str]
    passages: list[Passage]
    group_size: int
    exclude: torch.Tensor

    @property
    def passage_ids(self) -> list[int]:
        return [p.id for p in self.passages]

    def tokenize(self, encoder: Any, query_max_length: int | None = None) -> dict[str, Any]:
        """{"query", "passage"} encodings from `encoder` (a DualEncoder); `query_max_length`
        overrides the encoder's for this batch (TACO's per-task query lengths)."""
        with _query_max_length(encoder, query_max_length):
            queries = encoder.tokenize_queries(self.queries, self.task)
        passages = encoder.tokenize_passages([p.title for p in self.passages], [p.text for p in self.passages])
        return {"query": queries, "passage": passages}


@contextmanager
def _query_max_length(encoder: Any, length: int | None) -> Iterator[None]:
    """Temporarily set `encoder.config.query_max_length`."""
    saved = encoder.config
    if length is not None and length != saved.query_max_length:
        encoder.config = dataclasses.replace(saved, query_max_length=length)
    try:
        yield
    finally:
        encoder.config = saved


class MultitaskBatches:
    """Per-task batches as a pure function of (seed, task, step, process).

    Query order is a fresh seeded permutation per task and epoch; each query takes one
    positive and `n_negatives` hard negatives sampled per step (``sampling="top"``: its first
    positive and its top-ranked negatives, as the official TACO code), topped up with random
    passages off its gold pages when it has too few. With several processes, process r
    takes the r-th slice of each step's queries (each process holds its own batch size).
    """

    def __init__(self, examples: Mapping[str, Sequence[TrainingExample]], store: PassageStore,
                 batch_sizes: int | Mapping[str, int], n_negatives: int = 1, seed: int = 0,
                 num_processes: int = 1, process_index: int = 0, sampling: str = "sample"):
        if sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative sampling must be one of {', '.join(NEGATIVE_SAMPLING)}, got {sampling!r}")
        if not examples:
            raise ValueError("no tasks to train on")
        for task, task_examples in examples.items():
            if not task_examples:
                raise ValueError(f"task {task}: no training examples")
        if n_negatives < 0:
            raise ValueError(f"n_negatives must be >= 0, got {n_negatives}")
        self.examples = {t: e if isinstance(e, Sequence) else list(e) for t, e in examples.items()}
        self.store = store
        sizes = batch_sizes if isinstance(batch_sizes, Mapping) else {t: batch_sizes for t in self.examples}
        unknown = set(sizes) - set(self.examples)
        if unknown:
            raise ValueError(f"batch sizes for tasks without examples: {sorted(unknown)}")
        self.batch_sizes = {t: int(sizes.get(t, 0)) for t in self.examples}
        for task, size in self.batch_sizes.items():
            if size < 1:
                raise ValueError(f"task {task}: batch size must be >= 1, got {size}")
        self.n_negatives = n_negatives
        self.sampling = sampling
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self._orders: dict[str, tuple[int, list[int]]] = {}

    @property
    def tasks(self) -> list[str]:
        return list(self.examples)

    def _example(self, task: str, position: int) -> TrainingExample:
        examples = self.examples[task]
        epoch, offset = divmod(position, len(examples))
        cached = self._orders.get(task)
        if cached is None or cached[0] != epoch:
            order = random.Random(f"{self.seed}:{task}:epoch:{epoch}").sample(range(len(examples)), len(examples))
            self._orders[task] = cached = (epoch, order)
        return examples[cached[1][offset]]

    def _random_negative(self, rng: random.Random, gold: set[str], taken: set[int]) -> int:
        for _ in range(_RANDOM_TRIES):
            pid = rng.randrange(len(self.store))
            if pid not in taken and self.store.page_id(pid) not in gold:
                return pid
        raise ValueError(f"{self.store.path}: found no random passage off the gold pages {sorted(gold)[:3]} "
                         f"in {_RANDOM_TRIES} draws; is the corpus only gold pages?")

    def batch(self, task: str, step: int) -> TaskBatch:
        """The batch of `task` at global step `step` for this process."""
        if task not in self.examples:
            raise ValueError(f"unknown task {task!r}; training tasks: {', '.join(self.examples)}")
        size = self.batch_sizes[task]
        first = (step * self.num_processes + self.process_index) * size
        rng = random.Random(f"{self.seed}:{task}:step:{step}:{self.process_index}")
        group = 1 + self.n_negatives
        chosen = [self._example(task, position) for position in range(first, first + size)]
        ids: list[int] = []
        for example in chosen:
            if self.sampling == "top":
                positive, negatives = example.positives[0], list(example.negatives[:self.n_negatives])
            else:
                positive = example.positives[rng.randrange(len(example.positives))]
                negatives = rng.sample(example.negatives, min(self.n_negatives, len(example.negatives)))
            taken = {positive, *negatives}
            gold = set(example.gold_pages)
            while len(negatives) < self.n_negatives:
                pid = self._random_negative(rng, gold, taken)
                negatives.append(pid)
                taken.add(pid)
            ids += [positive, *negatives]
        passages = self.store.get_many(ids)
        exclude = torch.zeros(len(chosen), len(ids), dtype=torch.bool)
        for i, example in enumerate(chosen):
            gold = set(example.gold_pages)
            for j, passage in enumerate(passages):
                if j != i * group and passage.wikipedia_id in gold:
                    exclude[i, j] = True
        return TaskBatch(task, [e.qid for e in chosen], [e.query for e in chosen], passages, group, exclude)

    def state_dict(self) -> dict[str, Any]:
        """What fixes the batch sequence (the step is the position; it is saved by the trainer)."""
        return {"seed": self.seed, "tasks": {t: len(e) for t, e in self.examples.items()},
                "batch_sizes": dict(self.batch_sizes), "n_negatives": self.n_negatives,
                "num_processes": self.num_processes, "sampling": self.sampling}

    def check_state(self, state: Mapping[str, Any], where: str) -> None:
        """Raise if a checkpoint's batch sequence differs from this one's (resume would diverge)."""
        mine = self.state_dict()
        if dict(state) != mine:
            raise ValueError(f"{where}: the checkpoint was trained on other data or batching ({dict(state)}); "
                             f"now {mine}")


def temperature_batch_sizes(counts: Mapping[str, int], total: int, temperature: float) -> dict[str, int]:
    """Split `total` queries per step over tasks by rates proportional to n_t^(1/T) (TACO's
    task mixing; its KILT scripts use T=4; T=1 is proportional, a large T near-equal): each
    task one query, plus the floor of total * rate - 1, the remainder going to the largest
    fractional parts, as the official code rounds."""
    if temperature <= 0:
        raise ValueError(f"task temperature must be > 0, got {temperature}")
    if total < len(counts):
        raise ValueError(f"{total} queries per step cannot give each of {len(counts)} tasks one")
    if any(n < 1 for n in counts.values()):
        raise ValueError(f"every task needs training queries, got {dict(counts)}")
    tasks = list(counts)
    rates = np.array([counts[t] ** (1.0 / temperature) for t in tasks])
    raw = total * rates / rates.sum() - 1.0
    extra = np.maximum(np.floor(raw), 0).astype(int)
    spare = total - len(tasks)
    while extra.sum() < spare:
        extra[np.argmax(raw - extra)] += 1
    while extra.sum() > spare:
        extra[np.argmax(extra)] -= 1
    return {t: 1 + int(x) for t, x in zip(tasks, extra)}
