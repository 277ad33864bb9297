"""A KILT task file -> a KILT prediction file, for any page-ranking function (BM25, the dense
retriever, retrieve-then-rerank)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from .io import read_task_file, write_predictions
from .tasks import parse_task_filename

#: (queries, task) -> each query's page ids, best first (at most k: `kilt.hits`'s page contract)
PageRanker = Callable[[list[str], Optional[str]], list[list[str]]]


def predict_file(rank_pages: PageRanker, task_file: str | Path, out_path: str | Path, task: str | None = None,
                 *, require_task: bool = False, batch_size: int = 256, max_queries: int = 0,
                 progress: bool = True) -> int:
    """Rank pages for the queries of a KILT task file and write them as a KILT prediction file;
    returns the number of queries written.

    `task` defaults to the task the file name names (None for another name, or a ValueError with
    `require_task`). The whole file is read and checked before any ranking, so a blank query
    fails first, naming file, line and id. `max_queries` keeps the first n queries (0 = all).
    """
    if batch_size < 1 or max_queries < 0:
        raise ValueError(f"batch_size must be >= 1 and max_queries >= 0, got {batch_size} and {max_queries}")
    task_file = Path(task_file)
    if task is None:
        parsed = parse_task_filename(task_file.name)
        if parsed is None and require_task:
            raise ValueError(f"{task_file}: cannot tell the task from the file name; pass task=")
        task = parsed[0] if parsed else None
    examples = read_task_file(task_file)[: max_queries or None]
    predictions: list[tuple[str, list[str]]] = []
    with tqdm(total=len(examples), desc=f"ranking {task_file.name}", unit="query", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            pages = rank_pages([e.input for e in chunk], task)
            if len(pages) != len(chunk):
                raise RuntimeError(f"the page ranker returned {len(pages)} rankings for {len(chunk)} queries")
            predictions.extend((e.id, ranking) for e, ranking in zip(chunk, pages))
            bar.update(len(chunk))
    return write_predictions(out_path, predictions)
