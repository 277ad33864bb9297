"""The corpus stages: the knowledge source chunked into passages, and their BM25 index."""
from __future__ import annotations

import logging

from kilt.io import iter_pages, read_task_file
from kilt.passages import PassageStore, write_passages

from ..cache import stage_key
from .context import StageContext

log = logging.getLogger("mtr.experiment")


class CorpusStages:
    """Passages (chunked once, checked against the queries' provenance) and the BM25 backend."""

    def __init__(self, context: StageContext):
        self.context = context
        self._store: PassageStore | None = None
        self._bm25 = None

    def passages(self) -> PassageStore:
        """The passage store, built on first use; warns of provenance pages it lacks."""
        if self._store is None:
            ctx, folder = self.context, self.context.work / "passages"
            source = ctx.knowledge_source
            stat = source.stat()
            key = stage_key(source=str(source.resolve()), size=stat.st_size, mtime=stat.st_mtime,
                            words=ctx.config.passage_words)
            with ctx.cache.stage("passages"):
                if not ctx.cache.cached(folder, key):
                    n = write_passages(source, folder / "passages.jsonl", words=ctx.config.passage_words)
                    log.info("chunked %s into %d passages", source, n)
                    ctx.cache.finish(folder, key)
                self._store = PassageStore(folder / "passages.jsonl")
            self._check_gold_pages()
        return self._store

    def _check_gold_pages(self) -> None:
        """Count provenance pages absent from the knowledge source, per file, and warn."""
        ctx = self.context
        pages = {p.wikipedia_id for p in iter_pages(ctx.knowledge_source)}
        for task, splits in ctx.task_files.items():
            for split, path in splits.items():
                examples = read_task_file(path)
                if not examples:
                    raise ValueError(f"{path}: no queries")
                missing = sum(1 for e in examples for p in e.gold_pages if p not in pages)
                if missing:
                    msg = f"{path}: {missing} provenance page(s) are absent from {ctx.knowledge_source}"
                    log.warning(msg)
                    ctx.warnings.append(msg)

    def passages_key(self) -> str:
        return self.context.cache.key(self.context.work / "passages")

    def bm25(self):
        """The BM25 backend over the passages (built, or loaded from the cache, once per run)."""
        if self._bm25 is None:
            self._bm25 = self._bm25_stage()
        return self._bm25

    def _bm25_stage(self):
        from kilt.bm25 import BM25Retriever

        store, cache = self.passages(), self.context.cache
        folder = self.context.work / "bm25"
        key = stage_key(passages=self.passages_key())
        with cache.stage("bm25-index"):
            if cache.cached(folder, key):
                return BM25Retriever.load(folder / "index", store)
            backend = BM25Retriever.build(store)
            backend.save(folder / "index")
            cache.finish(folder, key)
            return backend
