"""`Experiment`: finds a KILT folder's inputs, builds every configured system, scores it on
the dev files and returns the result document."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kilt.io import read_task_file, write_task_records
from kilt.tasks import find_task_files, query_group
from safeio.identity import file_version

from ..pipeline import Pipeline
from ..rerank.fusion import Fusion
from .builders import SystemBuilder
from .cache import StageCache, stage_key
from .config import ExperimentConfig
from .evaluation import SystemResult, score_task, significance
from .report import machine_info
from .stages.scores import KeptScores
from .systems import parse_system, split_fusion


#: a KILT folder's knowledge source: ours (`mtr kilt-subset`), or as KILT's download names it
KNOWLEDGE_SOURCE_NAMES = ("knowledge_source.jsonl", "knowledge_source.jsonl.gz", "kilt_knowledgesource.json")


class Experiment:
    """Runs the configured systems stage by stage; `run()` returns the result document."""

    def __init__(self, config: ExperimentConfig, progress: bool = True):
        if not config.data_dir:
            raise ValueError("data_dir is required")
        self.config = config
        self.data_dir = Path(config.data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"{self.data_dir}: data folder not found")
        self.knowledge_source = self._find_knowledge_source()
        self.task_files = self._find_tasks()
        for name in config.systems:
            self._parse_system(name)
            if split_fusion(name)[1] == "fused" and not config.fusion_validation:
                raise ValueError(f"{name} needs fusion_validation > 0: training queries held out to fit on")
        work = config.work_path
        work.mkdir(parents=True, exist_ok=True)
        if config.score_on == "validation":
            self.task_files = self._validation_files(work / "validation")
        self.cache = StageCache(work, fresh=config.fresh)
        self.build = SystemBuilder(config, self.knowledge_source, self.task_files, self.cache, progress)
        self._results: dict[str, SystemResult] = {}

    # ----------------------------------------------------------------- inputs
    def _find_knowledge_source(self) -> Path:
        if self.config.knowledge_source:
            path = Path(self.config.knowledge_source)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: knowledge source not found")
            return path
        for name in KNOWLEDGE_SOURCE_NAMES:
            if (self.data_dir / name).is_file():
                return self.data_dir / name
        raise FileNotFoundError(f"{self.data_dir}: no {' or '.join(KNOWLEDGE_SOURCE_NAMES)} (or pass --knowledge-source)")

    def _find_tasks(self) -> dict[str, dict[str, Path]]:
        found = find_task_files(self.data_dir)
        tasks = self.config.tasks or sorted(t for t, splits in found.items() if "dev" in splits)
        for task in tasks:
            if task not in found or "dev" not in found[task]:
                raise FileNotFoundError(f"{self.data_dir}: no dev file for task {task!r}")
        if not tasks:
            raise FileNotFoundError(f"{self.data_dir}: no <task>-dev-kilt.jsonl files")
        return {t: found[t] for t in tasks}

    def _validation_files(self, folder: Path) -> dict[str, dict[str, Path]]:
        """Each task's training queries split by group (`query_group`): the held-out share as its
        "dev" file, the rest as its train file, written once into `folder` (the same split for
        the same files, share and seed); the data folder's dev files are never read."""
        from ..rerank.fusion import split_validation

        c, files = self.config, {}
        for task, splits in self.task_files.items():
            if "train" not in splits:
                raise FileNotFoundError(f"{self.data_dir}: score_on validation needs {task}-train-kilt.jsonl")
            train, held = split_validation(read_task_file(splits["train"]), c.validation_split, seed=c.seed,
                                           key=lambda e, task=task: query_group(e.id, e.meta, task))
            if not train or not held:
                raise ValueError(f"{splits['train']}: too few query groups to hold out a validation split")
            files[task] = {"train": folder / f"{task}-train-kilt.jsonl", "dev": folder / f"{task}-dev-kilt.jsonl"}
            folder.mkdir(parents=True, exist_ok=True)
            for split, part in (("train", train), ("dev", held)):
                ids, path = [e.id for e in part], files[task][split]
                if not path.is_file() or [e.id for e in read_task_file(path)] != ids:  # unchanged: stages stay valid
                    write_task_records(path, splits["train"], ids)
        return files

    def _parse_system(self, name: str) -> tuple[str, str | None]:
        return parse_system(name, self.task_files, self.config.teacher, self.config.distill_loss)

    # ----------------------------------------------------------------- systems
    def system(self, name: str) -> SystemResult:
        if name in self._results:
            return self._results[name]
        start = time.perf_counter()
        retriever_name, reranker_name = self._parse_system(name)
        reranker = self.build.reranker(reranker_name, retriever_name) if reranker_name else None
        fusion = self._fusion(split_fusion(name)[1], retriever_name, reranker_name, reranker)
        result = self._predict(name, self.build.retriever(retriever_name), reranker, fusion)
        result.seconds = time.perf_counter() - start
        result.fusion = asdict(fusion) if fusion is not None else None
        result.models = self.build.models(retriever_name, reranker_name)
        self._results[name] = result
        return result

    def _fusion(self, kind: str | None, retriever_name: str, reranker_name: str | None, reranker) -> Fusion | None:
        """How a system's final order combines both scores: fitted interpolation, rrf, or none."""
        if kind == "fused":
            return self.build.fusion(retriever_name, reranker_name, reranker)
        return Fusion("rrf") if kind == "rrf" else None

    def _predict(self, name: str, search, rerank=None, fusion: Fusion | None = None) -> SystemResult:
        """Predictions for every dev file, scored page-level; cached under predictions/<name>."""
        c = self.config
        folder = self.cache.work / "predictions" / name
        retriever_name, reranker_name = self._parse_system(name)
        rerank_cap = c.rerank_queries if rerank is not None else 0
        limit = min([n for n in (c.dev_queries, rerank_cap) if n > 0], default=0)  # queries per task, 0: all
        capped = limit > 0
        reranker_key = self.build.reranker_key(retriever_name, reranker_name) if reranker_name else None
        key = stage_key(retriever=self.build.retriever_key(retriever_name), reranker=reranker_key,
                        k=c.k, rerank_k=c.rerank_k if rerank is not None else 0, rerank_queries=rerank_cap,
                        **({"dev_queries": c.dev_queries} if c.dev_queries else {}),
                        dev={t: file_version(s["dev"]) for t, s in self.task_files.items()},
                        **({"fusion": asdict(fusion)} if fusion is not None else {}))
        per_task: dict[str, dict[str, float]] = {}
        queries: dict[str, dict[str, dict[str, float]]] = {}
        start = time.perf_counter()
        with self.cache.stage(f"predict {name}"):
            cached = self.cache.cached(folder, key)
            if rerank is not None and not cached:  # shared with this reranker's other fusions
                rerank = KeptScores(rerank, self.cache.work / "scores" / f"{reranker_key}.json")
            for task, splits in self.task_files.items():
                out = folder / f"{task}-dev.jsonl"
                if not cached:
                    Pipeline(search, rerank, fusion).predict(
                        splits["dev"], out, task=task, k=c.k, rerank_k=c.rerank_k if rerank is not None else 0,
                        max_queries=limit if capped else 0, progress=self.build.progress)
                    if rerank is not None:
                        rerank.save()
                per_task[task], queries[task] = score_task(splits["dev"], out, subset=capped)
            if not cached:
                self.cache.finish(folder, key)
        return SystemResult(per_task, queries, time.perf_counter() - start)

    # ----------------------------------------------------------------- document
    @property
    def results(self) -> dict[str, SystemResult]:
        """Each system scored so far, by name."""
        return dict(self._results)

    def significance(self) -> list[dict[str, Any]]:
        return significance(self._results, list(self.task_files), self.config.seed)

    def run(self) -> dict[str, Any]:
        total = time.perf_counter()
        systems = self.config.systems
        retrievers = [self._parse_system(name)[0] for name in systems]
        for i, name in enumerate(systems):
            self.system(name)
            if retrievers[i] not in retrievers[i + 1:]:
                self.build.release(retrievers[i])  # one index in memory at a time
        return {
            "machine": machine_info(),
            "data": {"data_dir": str(self.data_dir), "knowledge_source": str(self.knowledge_source),
                     "passages": len(self.build.passages()), "tasks": list(self.task_files),
                     "dev_files": {t: str(s["dev"]) for t, s in self.task_files.items()},
                     "warnings": self.build.warnings},
            "config": asdict(self.config),
            "systems": {name: {"per_task": r.per_task, "avg": r.avg(), "seconds": round(r.seconds, 1),
                               **({"fusion": r.fusion} if r.fusion is not None else {}), "models": r.models}
                        for name, r in self._results.items()},
            "significance": self.significance(),
            "stages": {k: round(v, 1) for k, v in self.cache.timings.items()},
            "seconds": round(time.perf_counter() - total, 1),
        }
