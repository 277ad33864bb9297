"""The fusion stage: interpolation weights of retriever and reranker scores, fitted on the
training queries held out from the reranker's training (never on dev queries)."""
from __future__ import annotations

import logging

from ...rerank.base import default_passage_text
from ...rerank.fusion import Fusion, FusionQuery
from ..cache import stage_key
from .context import StageContext
from .rerankers import RerankerStages
from .retrievers import RetrieverStages
from .splits import HoldOut

log = logging.getLogger("mtr.experiment")


class FusionStage:
    """Fitted fusion weights per (retriever, reranker), cached under fusion/<retriever>+<reranker>."""

    def __init__(self, context: StageContext, retrievers: RetrieverStages, rerankers: RerankerStages,
                 holdout: HoldOut):
        self.context = context
        self.retrievers = retrievers
        self.rerankers = rerankers
        self.holdout = holdout

    def fusion(self, retriever_name: str, reranker_name: str, reranker) -> Fusion:
        """Interpolation weights fitted on the validation queries' top `rerank_k` candidates;
        saved beside the trained reranker too, where `mtr pipeline --fusion fitted` reads them."""
        from ...rerank.fusion import fit_alpha

        ctx, c = self.context, self.context.config
        folder = ctx.work / "fusion" / f"{retriever_name}+{reranker_name}"
        key = stage_key(retriever=self.retrievers.retriever_key(retriever_name),
                        reranker=self.rerankers.reranker_key(retriever_name, reranker_name), rerank_k=c.rerank_k,
                        per_task=c.fusion_per_task, **self.rerankers.data_key())
        with ctx.cache.stage(f"fusion {retriever_name}+{reranker_name}"):
            if ctx.cache.cached(folder, key):
                return Fusion.load(folder)
            queries = self._validation_scores(retriever_name, reranker)
            fusion = fit_alpha(queries, per_task=c.fusion_per_task)
            log.info("fusion %s+%s: alpha %.2f, per task %s (fitted on %d validation queries)", retriever_name,
                     reranker_name, fusion.alpha, fusion.task_alphas, len(queries))
            fusion.save(folder)
            trained = self.rerankers.trained_folder(retriever_name, reranker_name)
            if trained.is_dir():
                fusion.save(trained)
            ctx.cache.finish(folder, key)
            return fusion

    def _validation_scores(self, retriever_name: str, reranker) -> list[FusionQuery]:
        """Both scores and gold flags of each validation query's top `rerank_k` candidates."""
        from tqdm.auto import tqdm

        search, queries = self.retrievers.retriever(retriever_name), []
        k = self.context.config.rerank_k
        tasks = {task: self.holdout.validation_queries(task) for task in self.context.train_tasks()}
        chunks = [(task, examples[i : i + 64]) for task, examples in tasks.items() for i in range(0, len(examples), 64)]
        with tqdm(total=sum(map(len, tasks.values())), desc="fusion fit", unit="query",
                  disable=not self.context.progress) as bar:
            for task, chunk in chunks:
                hits = search.search([e.input for e in chunk], task=task, k=k)
                scores = reranker.rerank_many([e.input for e in chunk],
                                              [[default_passage_text(h) for h in row] for row in hits],
                                              tasks=[task] * len(chunk))
                for example, row, row_scores in zip(chunk, hits, scores):
                    gold = set(example.gold_pages)
                    queries.append(FusionQuery(task, [h.score for h in row], row_scores,
                                               [h.wikipedia_id in gold for h in row],
                                               [h.wikipedia_id for h in row]))
                bar.update(len(chunk))
        return queries
