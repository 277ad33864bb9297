"""The systems a run scores, built through the library and cached stage by stage (see stages/):
`SystemBuilder` composes the stages and is what the runner and the seed study call."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kilt.io import KiltExample
from kilt.passages import PassageStore

from ..devices import resolve_device
from ..rerank.fusion import Fusion
from .cache import StageCache
from .config import ExperimentConfig
from .stages import (CorpusStages, EncoderStages, FusionStage, HoldOut, RerankerStages, RetrieverStages,
                     StageContext)
from .stages.keys import (BASE_RUN, RERANK_INPUTS, cross_encoder_train_config, llm_reranker_key,
                          llm_reranker_train_config, train_config, train_stage_key)

__all__ = ["BASE_RUN", "RERANK_INPUTS", "SystemBuilder", "cross_encoder_train_config", "llm_reranker_key",
           "llm_reranker_train_config", "train_config", "train_stage_key"]


class SystemBuilder:
    """Builds (or loads from the stage cache) the retrievers, rerankers and fusion weights that
    systems name, each through its stage."""

    def __init__(self, config: ExperimentConfig, knowledge_source: Path, task_files: dict[str, dict[str, Path]],
                 cache: StageCache, progress: bool = True):
        self.context = StageContext(config, knowledge_source, task_files, cache, resolve_device(config.device),
                                    progress)
        self.holdout = HoldOut(self.context)
        self.corpus = CorpusStages(self.context)
        self.encoders = EncoderStages(self.context, self.corpus, self.holdout)
        self.retrievers = RetrieverStages(self.context, self.corpus, self.encoders)
        self.rerankers = RerankerStages(self.context, self.corpus, self.retrievers, self.holdout)
        self._fusion = FusionStage(self.context, self.retrievers, self.rerankers, self.holdout)
        self.rerankers.teacher.fusion = self._fusion

    @property
    def config(self) -> ExperimentConfig:
        return self.context.config

    @property
    def progress(self) -> bool:
        return self.context.progress

    @property
    def warnings(self) -> list[str]:
        """Problems with the inputs found while building (e.g. provenance pages absent from the source)."""
        return self.context.warnings

    def passages(self) -> PassageStore:
        return self.corpus.passages()

    def retriever(self, name: str):
        """A search backend for a retriever system name (built or loaded on first use)."""
        return self.retrievers.retriever(name)

    def retriever_key(self, name: str) -> str:
        return self.retrievers.retriever_key(name)

    def release(self, name: str) -> None:
        """Free retriever system `name`'s index; a later use loads it again."""
        self.retrievers.release(name)

    def training_run(self, name: str) -> Path:
        """The trainer's output folder of fine-tuned system `name` (checkpoints, final/, log)."""
        return self.encoders.training_run(name)

    def models(self, retriever_name: str, reranker_name: str | None) -> dict[str, str]:
        """The files system `<retriever>+<reranker>` reads: passages, the retriever's encoder,
        index and prompt style, and the trained reranker's folder (none for untrained zero-shot)."""
        models = {"passages": str(self.passages().path), **self.retrievers.models(retriever_name)}
        if reranker_name and reranker_name != "zero-shot":
            models["reranker"] = str(self.rerankers.trained_folder(retriever_name, reranker_name))
        return models

    def reranker(self, method: str, retriever_name: str):
        """Reranker `method` fine-tuned on `retriever_name`'s candidates (or zero-shot)."""
        return self.rerankers.reranker(method, retriever_name)

    def reranker_key(self, retriever_name: str, method: str) -> str:
        return self.rerankers.reranker_key(retriever_name, method)

    def fusion(self, retriever_name: str, reranker_name: str, reranker) -> Fusion:
        """Fusion weights fitted on the held-out training queries."""
        return self._fusion.fusion(retriever_name, reranker_name, reranker)

    def train_queries(self, task: str) -> list[KiltExample]:
        """The queries rerankers train on: the train file less the fusion validation part."""
        return self.holdout.train_queries(task)

    def validation_queries(self, task: str) -> list[KiltExample]:
        """Training-file queries held out from reranker training, for fitting the fusion weights."""
        return self.holdout.validation_queries(task)

    def _holdout_key(self) -> dict[str, Any]:
        return self.holdout.key()
