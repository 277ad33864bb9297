"""Retriever stages: a search backend per retriever system, BM25 or a dense index (flat unless the
experiment's `index` section says otherwise) of the passages encoded by the system's dual encoder."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from typing import Any

from ..cache import stage_key
from .context import StageContext
from .corpus import CorpusStages
from .encoders import EncoderStages


class RetrieverStages:
    """Search backends by system name, built or loaded once per run."""

    def __init__(self, context: StageContext, corpus: CorpusStages, encoders: EncoderStages):
        self.context = context
        self.corpus = corpus
        self.encoders = encoders
        self._retrievers: dict[str, Any] = {}
        self._models: dict[str, dict[str, str]] = {}

    def retriever(self, name: str):
        """A search backend for a retriever system name (built or loaded on first use)."""
        if name not in self._retrievers:
            self._retrievers[name] = self.corpus.bm25() if name == "bm25" else self._dense(name)
        return self._retrievers[name]

    def release(self, name: str) -> None:
        """Drop system `name`'s search backend (a dense index can take most of the memory); the
        next use loads it again from its cached stage."""
        self._retrievers.pop(name, None)

    def models(self, name: str) -> dict[str, str]:
        """The files a built retriever reads (encoder, index, query prompt style), for reusing
        them with `mtr retrieve` or `mtr pipeline`; empty for BM25, which needs only the passages."""
        self.retriever(name)
        return dict(self._models.get(name, {}))

    def retriever_key(self, name: str) -> str:
        return self.context.cache.key(self.context.work / ("bm25" if name == "bm25" else f"dense/{name}"))

    def _encoder_overrides(self, name: str) -> dict[str, Any]:
        """Zero-shot queries go in plain unless `zero_shot_prompts`: the model never saw our prompts."""
        c = self.context.config
        overrides: dict[str, Any] = {"query_max_length": c.query_max_length,
                                     "passage_max_length": c.passage_max_length}
        if name == "zero-shot" and not c.zero_shot_prompts:
            overrides["query_prompts"] = {task: "{query}" for task in self.context.task_files}
        return overrides

    def _dense(self, name: str):
        """Encode the passages with system `name`'s encoder, build its index, and search it."""
        from ...config import section_places
        from ...encoder import DualEncoder
        from ...encoding import encode_corpus
        from ...indexing import Index, IndexConfig
        from ...models import packaged_minilm_path
        from ...retriever import Retriever

        ctx, c = self.context, self.context.config
        store = self.corpus.passages()
        encoder_path, encoder_key = self.encoders.encoder_path(name)
        encoder = DualEncoder.from_pretrained(encoder_path, **self._encoder_overrides(name))
        encoder.to(ctx.device).eval()
        folder = ctx.work / "dense" / name
        default = asdict(type(c.index)())
        changed = {n: v for n, v in asdict(c.index).items() if v != default[n]}
        key = stage_key(passages=self.corpus.passages_key(), encoder=encoder_key,
                        q=c.query_max_length, p=c.passage_max_length,
                        **({"index": changed} if changed else {}))  # the default (flat) keeps earlier keys
        with ctx.cache.stage(f"index {name}"):
            if ctx.cache.cached(folder, key):
                index = Index.load(folder / "index", expected_dim=encoder.dim, device=c.device)
            else:
                shards = encode_corpus(encoder, store.path, folder / "shards", shard_size=50_000,
                                       batch_size=c.encode_batch_size, progress=ctx.progress)
                config = IndexConfig(**section_places(c.index), device=c.device)
                index = Index.from_shards(shards, config, progress=ctx.progress)
                index.save(folder / "index")
                shutil.rmtree(shards)
                ctx.cache.finish(folder, key)
        plain = name == "zero-shot" and not c.zero_shot_prompts
        packaged = encoder_path == str(packaged_minilm_path())
        self._models[name] = {"encoder": "minilm" if packaged else encoder_path, "index": str(folder / "index"),
                              "query_prompts": "none" if plain else ""}
        return Retriever(encoder, index, store, batch_size=c.encode_batch_size)
