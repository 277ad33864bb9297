"""Dense retrieval: task-prompted query vectors -> top-k passages -> KILT page rankings."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kilt.hits import PASSAGES_PER_PAGE, Hit, read_hits, search_pages
from kilt.passages import PassageStore
from kilt.predict import predict_file
from kilt.tasks import check_queries

from .encoding import QueryEncoder
from .indexing import Index

logger = logging.getLogger(__name__)


class Retriever:
    """Searches `index` with `encoder`'s query vectors and reads hits from the passage file.

    `encoder` is a DualEncoder (anything with `dim` and `encode_queries(texts, task, batch_size)`).
    """

    def __init__(self, encoder: QueryEncoder, index: Index, passages: PassageStore, batch_size: int = 64,
                 force: bool = False):
        if index.dim != encoder.dim:
            raise ValueError(f"index dim {index.dim} != encoder dim {encoder.dim}")
        if len(index) and int(index.ids.max()) >= len(passages):
            raise ValueError(f"the index holds passage id {int(index.ids.max())} but {passages.path} has only "
                             f"{len(passages)} passages: index and passage file do not belong together")
        if not force:
            index.check_passages(passages)
        self.encoder = encoder
        self.index = index
        self.passages = passages
        self.batch_size = batch_size

    def _search(self, queries: Sequence[str], task: str | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.encoder.encode_queries(check_queries(queries), task=task, batch_size=self.batch_size)
        return self.index.search(vectors, k)

    def search(self, queries: Sequence[str], task: str | None = None, k: int = 100) -> list[list[Hit]]:
        """The top-`k` passages of each query (fewer only if the index is smaller), best first."""
        if not queries:
            return []
        scores, ids = self._search(queries, task, k)
        return [read_hits(self.passages, row_ids[row_ids >= 0].tolist(), row_scores[row_ids >= 0].tolist())
                for row_scores, row_ids in zip(scores, ids)]

    def search_pages(self, queries: Sequence[str], task: str | None = None, k: int = 100,
                     passages_per_page_factor: int = PASSAGES_PER_PAGE) -> list[list[str]]:
        """Up to `k` wikipedia_ids per query, ordered by each page's best passage (`kilt.hits`'s
        page contract: the search starts at `k * passages_per_page_factor` passages and goes
        deeper for queries whose passages hold fewer than `k` pages)."""
        if k < 1 or passages_per_page_factor < 1:
            raise ValueError(f"k and passages_per_page_factor must be >= 1, got {k} and {passages_per_page_factor}")
        return search_pages(self, queries, k, task=task, depth=k * passages_per_page_factor)

    def predict(self, task_file: str | Path, out_path: str | Path, task: str | None = None, k: int = 100,
                batch_size: int = 256, progress: bool = True) -> int:
        """Rank `k` pages for every query of a KILT task file and write a KILT prediction file.

        `task` (the query prompt) defaults to the task named by the file. Returns the count.
        """
        return predict_file(lambda queries, task: self.search_pages(queries, task=task, k=k), task_file, out_path,
                            task=task, require_task=True, batch_size=batch_size, progress=progress)


def load_retriever(encoder_path: str | Path, index_dir: str | Path, passage_file: str | Path,
                   device: str | None = None, progress: bool = True, force: bool = False,
                   query_prompts: str = "", **index_overrides: Any) -> Retriever:
    """A Retriever from a saved DualEncoder, an `Index.save` folder and the passage file.

    `device` (auto | cpu | cuda) places the encoder and the index search (unset: the encoder
    stays on the CPU and the index searches as saved); `index_overrides` are `Index.load`
    search settings; `query_prompts` (a prompt style such as "none") replaces the encoder's saved
    query prompts. An index built from another encoder's vectors or another passage file (told
    apart by content, `Index.check_encoder` and `Index.check_passages`) is refused unless `force`.
    """
    from .devices import resolve_device
    from .encoder import DualEncoder, query_prompts_for
    from .encoding import encoder_fingerprint

    encoder = DualEncoder.from_pretrained(
        encoder_path, **({"query_prompts": query_prompts_for(query_prompts)} if query_prompts else {}))
    if device is not None:
        encoder.to(resolve_device(device))
        index_overrides = {"device": device, **index_overrides}
    index = Index.load(index_dir, expected_dim=encoder.dim, **index_overrides)
    if not force:
        index.check_encoder(encoder.config.model_name_or_path, encoder_fingerprint(encoder))
    return Retriever(encoder, index, PassageStore(passage_file, progress=progress), force=force)
