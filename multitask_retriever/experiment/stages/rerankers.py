"""Reranker stages: LLM rerankers and cross-encoder schedules, fine-tuned on a retriever's top
`rerank_k` candidates for the training queries (less the fusion hold-out)."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..cache import read_key, stage_key
from ..systems import cross_encoder_schedule, schedule_name
from .context import StageContext
from .corpus import CorpusStages
from .keys import (RERANK_INPUTS, cross_encoder_key, cross_encoder_train_config, llm_reranker_key,
                   llm_reranker_train_config)
from .retrievers import RetrieverStages
from .splits import HoldOut
from .teacher import TeacherStage

log = logging.getLogger("mtr.experiment")


class RerankerStages:
    """Rerankers by (method, retriever) name, trained or loaded from rerankers/<retriever>+<method>."""

    def __init__(self, context: StageContext, corpus: CorpusStages, retrievers: RetrieverStages, holdout: HoldOut):
        self.context = context
        self.corpus = corpus
        self.retrievers = retrievers
        self.holdout = holdout
        self.teacher = TeacherStage(context, self, retrievers)

    def _folder(self, retriever_name: str, method: str) -> Path:
        return self.context.work / "rerankers" / f"{retriever_name}+{method}"

    def reranker(self, method: str, retriever_name: str):
        """Reranker `method`, fine-tuned on `retriever_name`'s top candidates for the train
        queries (zero-shot query likelihood is not trained)."""
        self.retrievers.retriever(retriever_name)  # its stage key enters the reranker's
        stages = cross_encoder_schedule(method)
        if stages is not None:
            return self._cross_encoder(stages, retriever_name)
        return self._llm_reranker(method, retriever_name)

    def _llm_reranker(self, method: str, retriever_name: str):
        from ...rerank import reranker_class
        from ...rerank.train import train_reranker

        ctx, c = self.context, self.context.config
        start = self.reranker_start(method)
        folder = self._folder(retriever_name, method)
        train = llm_reranker_train_config(c, c.llm_reranker_loss or reranker_class(method).training_loss,
                                          str(folder / "train"), ctx.progress, self._epoch_steps())
        key = llm_reranker_key(self.retrievers.retriever_key(retriever_name), method, start, train,
                               c.max_train_queries, c.rerank_k, **self.data_key())
        with ctx.cache.stage(f"reranker {retriever_name}+{method}"):
            reranker = self._new_reranker(method, start)
            if method == "zero-shot":
                return reranker
            if ctx.cache.cached(folder, key):
                return self._load_reranker(folder / "train" / "final" / "reranker")
            examples = self.train_examples(retriever_name, method)
            result = train_reranker(reranker, examples, train, resume=True)
            log.info("trained %s on %d queries: loss %.4f -> %.4f", method, len(examples), result.losses[0],
                     result.loss)
            ctx.cache.finish(folder, key)
            return reranker

    def _cross_encoder(self, stages: list[str], retriever_name: str):
        """A cross-encoder trained through `stages` in order: contrastive (listwise CE of the
        gold passage against the retriever's candidates) or distill (`distill_loss` towards the
        teacher's scores). Each stage starts from the cached model of the stages before it, so
        cross-encoder.contrastive.distill continues the plain cross-encoder."""
        from ...rerank.examples import attach_teacher_scores, read_teacher_file
        from ...rerank.train import train_reranker

        ctx, c = self.context, self.context.config
        method = schedule_name(stages)
        folder = self._folder(retriever_name, method)
        previous = None
        if len(stages) > 1:
            previous = self._cross_encoder(stages[:-1], retriever_name)
            start = self.reranker_key(retriever_name, schedule_name(stages[:-1]))
        else:
            start = self.reranker_start("cross-encoder")
        distill = stages[-1] == "distill"
        train = cross_encoder_train_config(c, distill, str(folder / "train"), ctx.progress, self._epoch_steps())
        teacher = self.teacher.scores(retriever_name) if distill else None
        options = {"options": c.cross_encoder_options} if c.cross_encoder_options else {}
        key = cross_encoder_key(self.retrievers.retriever_key(retriever_name), method, start, train, distill,
                                read_key(teacher.parent / "stage.json") if teacher else None,
                                c.max_train_queries, c.rerank_k, **self.data_key(), **options)
        with ctx.cache.stage(f"reranker {retriever_name}+{method}"):
            if ctx.cache.cached(folder, key):
                return self._load_reranker(folder / "train" / "final" / "reranker")
            reranker = previous if previous is not None else self._new_reranker("cross-encoder", start)
            if teacher is not None:
                examples = attach_teacher_scores(self.teacher.examples(retriever_name), read_teacher_file(teacher))
            else:
                examples = self.train_examples(retriever_name, method)
            result = train_reranker(reranker, examples, train, resume=True)
            log.info("trained %s (%s stage) on %d queries: loss %.4f -> %.4f", method, stages[-1], len(examples),
                     result.losses[0], result.loss)
            ctx.cache.finish(folder, key)
            return reranker

    def reranker_key(self, retriever_name: str, method: str) -> str:
        if method == "zero-shot":
            return stage_key(method=method, start=self.reranker_start(method), **RERANK_INPUTS)
        return self.context.cache.key(self._folder(retriever_name, method))

    def trained_folder(self, retriever_name: str, method: str) -> Path:
        """Where reranker `method` on `retriever_name` saves its final weights."""
        return self._folder(retriever_name, method) / "train" / "final" / "reranker"

    def train_examples(self, retriever_name: str, method: str, per_task: int = 0):
        """Contrastive examples: each train query's gold passage vs the retriever's other top
        candidates (the first `per_task` train queries of each task when given); none is an error."""
        from ...rerank.examples import examples_from_search

        queries = {t: self.holdout.train_queries(t)[: per_task or None] for t in self.context.train_tasks()}
        examples = examples_from_search(queries, self.retrievers.retriever(retriever_name), self.corpus.passages(),
                                        self.context.config.rerank_k)
        if not examples:
            raise ValueError(f"no training query of {', '.join(self.context.task_files)} has a gold page among "
                             f"{retriever_name}'s top {self.context.config.rerank_k}: nothing to train {method} on")
        return examples

    def reranker_start(self, method: str) -> str:
        """The start model of a reranker, spelled out (it is part of the stage key)."""
        from ...models import packaged_minilm_path, resolve_llm

        if method == "cross-encoder":
            return self.context.config.cross_encoder or str(packaged_minilm_path())
        return str(resolve_llm(self.context.config.llm))

    def _new_reranker(self, method: str, start: str):
        """A fresh reranker, seeded: a new scoring head or module starts the same whatever ran before."""
        from accelerate.utils import set_seed

        from ...rerank import make_reranker

        set_seed(self.context.config.seed)
        options = self.context.config.cross_encoder_options if method == "cross-encoder" else {}
        return make_reranker(method, start, **options).to(self.context.device)

    def _load_reranker(self, path: Path):
        from ...rerank import load_reranker

        return load_reranker(path).to(self.context.device)

    def data_key(self) -> dict[str, Any]:
        """What the rerankers' inputs add to their stage keys: the task-aware query cut, the
        hold-out and the epoch sizing (the last two only when used)."""
        epochs = self.context.config.reranker_epochs
        return {**RERANK_INPUTS, **self.holdout.key(), **({"epochs": epochs} if epochs else {})}

    def _epoch_steps(self) -> int:
        """Steps of `reranker_epochs` passes over the training queries (0 when not asked for)."""
        c = self.context.config
        if not c.reranker_epochs:
            return 0
        n = sum(len(self.holdout.train_queries(t)) for t in self.context.train_tasks())
        return max(1, math.ceil(c.reranker_epochs * n / c.rerank.batch_size))
