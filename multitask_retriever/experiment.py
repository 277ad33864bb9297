"""Build and score every system on a KILT folder: the quickstart and `mtr benchmark-quality`.

Everything goes through the public API (chunking, BM25, DualEncoder, Index, Retriever,
MultitaskTrainer, rerankers, Pipeline, kilt.eval); nothing is special-cased for any data
set. Each stage caches its output in the work folder under a key of its settings, so a
second run with the same settings reuses finished stages (`fresh=True` redoes them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from kilt.eval import per_query
from kilt.io import atomic_write, iter_pages, read_task_file
from kilt.passages import PassageStore, write_passages
from kilt.stats import compare
from kilt.tasks import find_task_files

log = logging.getLogger("mtr.experiment")

METRICS = ("Rprec", "recall@5", "success_rate@5", "ndcg@10")  # per task; ndcg@10 is not an official KILT metric
AVERAGED = ("Rprec", "recall@5", "ndcg@10")
RETRIEVERS = ("bm25", "zero-shot", "naive", "taco")
RERANKERS = ("cross-encoder", "qpeft-a", "qpeft-r", "idspam", "prompt-tuning", "lora", "zero-shot")
CE_STAGES = ("contrastive", "distill")


def cross_encoder_schedule(reranker: str) -> list[str] | None:
    """The training stages a cross-encoder reranker name asks for: ``cross-encoder`` is one
    contrastive stage, ``cross-encoder.distill.contrastive`` distillation then contrastive
    (Pezzuti et al.'s schedules); None for any other reranker. Unknown stages are errors."""
    if reranker == "cross-encoder":
        return ["contrastive"]
    if not reranker.startswith("cross-encoder."):
        return None
    stages = reranker.split(".")[1:]
    bad = [s for s in stages if s not in CE_STAGES]
    if bad or not stages:
        raise ValueError(f"unknown cross-encoder stage {(bad or [''])[0]!r} in {reranker!r}; stages: "
                         f"{', '.join(CE_STAGES)} joined by dots, e.g. cross-encoder.contrastive.distill")
    return stages


def schedule_name(stages: list[str]) -> str:
    """The reranker name of a cross-encoder schedule; single-stage contrastive is ``cross-encoder``."""
    return "cross-encoder" if stages == ["contrastive"] else "cross-encoder." + ".".join(stages)


DEFAULT_SYSTEMS = ["bm25", "zero-shot", "naive", "taco", "taco+cross-encoder", "taco+qpeft-a"]


@dataclass
class ExperimentConfig:
    """What to build and score on a KILT folder (defaults sized for a 2-core CPU)."""

    data_dir: str = ""
    knowledge_source: str = field(default="", metadata={"help": "default: DATA_DIR/knowledge_source.jsonl[.gz]"})
    work_dir: str = field(default="", metadata={"help": "stage cache; default: runs/<data folder name>"})
    systems: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEMS),
                               metadata={"help": "bm25, zero-shot, naive, taco, single-<task>, <retriever>+<reranker>; "
                                       "rerankers: " + ", ".join(RERANKERS) + ", and cross-encoder schedules such "
                                       "as cross-encoder.distill or cross-encoder.contrastive.distill"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "default: every task with a dev file"})
    encoder: str = field(default="", metadata={"help": "dual-encoder start point; default: packaged all-MiniLM-L6-v2"})
    cross_encoder: str = field(default="", metadata={"help": "cross-encoder start point; default: packaged MiniLM"})
    llm: str = field(default="", metadata={"help": "LLM for LLM rerankers; default: packaged SmolLM2-135M (GGUF)"})
    device: str = "auto"
    seed: int = 0
    passage_words: int = 100
    k: int = 100
    encode_batch_size: int = 64
    zero_shot_prompts: bool = field(default=False, metadata={
        "help": "task prompts on zero-shot queries (default off: the pretrained model never saw them)"})
    # dual-encoder fine-tuning
    steps: int = 200
    per_task_batch_size: int = 16
    n_negatives: int = 1
    lr: float = 3e-5
    warmup_steps: int = 10
    temperature: float = 0.05
    query_max_length: int = 64
    passage_max_length: int = 160
    taco_beta: float = 0.999
    taco_tau: float = 2.0
    taco_warmup_steps: int = 0
    taco_median: str = field(default="nonzero", metadata={"help": "nonzero | all (see TrainConfig)"})
    # reranking
    rerank_k: int = 20
    rerank_queries: int = field(default=0, metadata={"help": "cap on reranked dev queries per task (0 = all)"})
    reranker_steps: int = 200
    reranker_batch_size: int = 8
    reranker_group_size: int = 8
    cross_encoder_steps: int = field(default=200, metadata={
        "help": "cross-encoder training steps (0: reranker_steps); its fresh scoring head needs more than the "
                "LLM rerankers' small modules"})
    reranker_lr: float = field(default=1e-4, metadata={"help": "cross-encoder learning rate"})
    teacher: str = field(default="qpeft-a", metadata={
        "help": "reranker whose scores on the retriever's training candidates the cross-encoder.*distill* "
                "schedules learn from (trained on the same candidates first)"})
    teacher_queries: int = field(default=50, metadata={
        "help": "training queries per task the teacher scores (0 = all; LLM scoring is slow on a CPU)"})
    distill_loss: str = field(default="ranknet", metadata={"help": "ranknet | kl | margin-mse"})
    llm_reranker_lr: float = field(default=1e-3, metadata={"help": "learning rate of the LLM rerankers' small modules"})
    max_train_queries: int = field(default=0, metadata={"help": "cap on training queries per task (0 = all)"})
    fresh: bool = False


@dataclass
class SystemResult:
    per_task: dict[str, dict[str, float]]
    per_query: dict[str, dict[str, dict[str, float]]]  # task -> qid -> metric -> value
    seconds: float

    def avg(self) -> dict[str, float]:
        tasks = list(self.per_task)
        return {m: sum(self.per_task[t][m] for t in tasks) / len(tasks) for m in AVERAGED} if tasks else {}


def machine_info() -> dict[str, Any]:
    import torch

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _key(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_key(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


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
        self.work = Path(config.work_dir or Path("runs") / self.data_dir.resolve().name)
        self.work.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.task_files = self._find_tasks()
        self.timings: dict[str, float] = {}
        self._results: dict[str, SystemResult] = {}
        self._store: PassageStore | None = None
        self._retrievers: dict[str, Any] = {}
        self._warnings: list[str] = []
        self._finished: set[Path] = set()  # stage folders finished by this run
        for name in config.systems:
            self._parse_system(name)

    # ----------------------------------------------------------------- inputs
    def _find_knowledge_source(self) -> Path:
        if self.config.knowledge_source:
            path = Path(self.config.knowledge_source)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: knowledge source not found")
            return path
        for name in ("knowledge_source.jsonl", "knowledge_source.jsonl.gz"):
            if (self.data_dir / name).is_file():
                return self.data_dir / name
        raise FileNotFoundError(
            f"{self.data_dir}: no knowledge_source.jsonl or knowledge_source.jsonl.gz (or pass --knowledge-source)")

    def _find_tasks(self) -> dict[str, dict[str, Path]]:
        found = find_task_files(self.data_dir)
        tasks = self.config.tasks or sorted(t for t, splits in found.items() if "dev" in splits)
        for task in tasks:
            if task not in found or "dev" not in found[task]:
                raise FileNotFoundError(f"{self.data_dir}: no dev file for task {task!r}")
        if not tasks:
            raise FileNotFoundError(f"{self.data_dir}: no <task>-dev-kilt.jsonl files")
        return {t: found[t] for t in tasks}

    # ----------------------------------------------------------------- stages
    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        log.info("stage %s done in %.1f s", name, seconds)

    def _cached(self, folder: Path, key: str) -> bool:
        """True when `folder` holds a finished stage with this key. Otherwise the folder is made
        ready for the stage: work an interrupted run left with the same key is kept (the stages
        resume from it), anything else is cleared."""
        stamp, started = folder / "stage.json", folder / "started.json"
        if (not self.config.fresh or folder in self._finished) and _read_key(stamp) == key:
            return True
        if self.config.fresh or _read_key(started) != key:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        with atomic_write(started) as f:
            json.dump({"key": key, "started": time.time()}, f)
        return False

    def _finish(self, folder: Path, key: str) -> None:
        with atomic_write(folder / "stage.json") as f:
            json.dump({"key": key, "finished": time.time()}, f)
        self._finished.add(folder)

    def passages(self) -> PassageStore:
        if self._store is None:
            folder = self.work / "passages"
            stat = self.knowledge_source.stat()
            key = _key(source=str(self.knowledge_source.resolve()), size=stat.st_size, mtime=stat.st_mtime,
                       words=self.config.passage_words)
            with self._stage("passages"):
                if not self._cached(folder, key):
                    n = write_passages(self.knowledge_source, folder / "passages.jsonl",
                                       words=self.config.passage_words)
                    log.info("chunked %s into %d passages", self.knowledge_source, n)
                    self._finish(folder, key)
                self._store = PassageStore(folder / "passages.jsonl")
            self._check_gold_pages()
        return self._store

    def _check_gold_pages(self) -> None:
        """Count provenance pages absent from the knowledge source, per file, and warn."""
        pages = {p.wikipedia_id for p in iter_pages(self.knowledge_source)}
        for task, splits in self.task_files.items():
            for split, path in splits.items():
                examples = read_task_file(path)
                if not examples:
                    raise ValueError(f"{path}: no queries")
                missing = sum(1 for e in examples for p in e.gold_pages if p not in pages)
                if missing:
                    msg = f"{path}: {missing} provenance page(s) are absent from {self.knowledge_source}"
                    log.warning(msg)
                    self._warnings.append(msg)

    def dev_examples(self, task: str):
        return read_task_file(self.task_files[task]["dev"])

    # ----------------------------------------------------------------- systems
    def retriever(self, name: str):
        """A search backend for a retriever system name (built or loaded on first use)."""
        if name not in self._retrievers:
            if name == "bm25":
                self._retrievers[name] = self._bm25()
            else:
                self._retrievers[name] = self._dense(name)
        return self._retrievers[name]

    def _bm25(self):
        from kilt.bm25 import BM25Retriever

        store = self.passages()
        folder = self.work / "bm25"
        key = _key(passages=self._passages_key())
        with self._stage("bm25-index"):
            if self._cached(folder, key):
                return BM25Retriever.load(folder / "index", store)
            backend = BM25Retriever.build(store)
            backend.save(folder / "index")
            self._finish(folder, key)
            return backend

    def _passages_key(self) -> str:
        return json.loads((self.work / "passages" / "stage.json").read_text())["key"]

    def _device(self) -> str:
        if self.config.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.config.device

    def _encoder_path(self, name: str) -> tuple[str, str]:
        """(folder or name of the DualEncoder for system `name`, its stage key)."""
        from .models import packaged_minilm_path

        start = self.config.encoder or str(packaged_minilm_path())
        if name == "zero-shot":
            return start, _key(encoder=start, prompts=self.config.zero_shot_prompts)
        return self._train_encoder(name, start)

    def _encoder_overrides(self, name: str) -> dict[str, Any]:
        """Zero-shot queries go in plain unless `zero_shot_prompts`: the model never saw our prompts."""
        overrides: dict[str, Any] = {"query_max_length": self.config.query_max_length,
                                     "passage_max_length": self.config.passage_max_length}
        if name == "zero-shot" and not self.config.zero_shot_prompts:
            overrides["query_prompts"] = {task: "{query}" for task in self.task_files}
        return overrides

    def train_tasks(self) -> list[str]:
        return [t for t, splits in self.task_files.items() if "train" in splits]

    def _training_examples(self) -> Path:
        """Training examples of every task with a train file, hard negatives from BM25; built once
        and shared by every fine-tuned system."""
        from .data import build_training_examples, write_training_examples

        tasks = self.train_tasks()
        if not tasks:
            raise FileNotFoundError(f"{self.data_dir}: no <task>-train-kilt.jsonl files to fine-tune on")
        folder = self.work / "train-data"
        files = {t: self.task_files[t]["train"] for t in tasks}
        key = _key(passages=self._passages_key(), files={t: _file_key(p) for t, p in files.items()},
                   max_train_queries=self.config.max_train_queries)
        bm25 = self.retriever("bm25")
        with self._stage("training data"):
            if not self._cached(folder, key):
                examples = build_training_examples(files, self.passages(), bm25,
                                                   max_queries=self.config.max_train_queries, progress=self.progress)
                write_training_examples(folder / "examples.jsonl", examples)
                self._finish(folder, key)
        return folder / "examples.jsonl"

    def _train_encoder(self, name: str, start: str) -> tuple[str, str]:
        """Fine-tune `start` with the project's trainer: naive or taco multitask, or single-<task>."""
        from .trainer import MultitaskTrainer, TrainConfig

        c = self.config
        method, tasks = ("single", [name.removeprefix("single-")]) if name.startswith("single-") \
            else (name, self.train_tasks())
        if method == "single" and "train" not in self.task_files[tasks[0]]:
            raise FileNotFoundError(f"{self.data_dir}: no {tasks[0]}-train-kilt.jsonl for {name}")
        examples = self._training_examples()
        folder = self.work / "train" / name
        train = TrainConfig(
            model_name_or_path=start, data_dir=str(self.data_dir), passages=str(self.passages().path), tasks=tasks,
            method=method, negatives=str(examples), steps=c.steps, per_task_batch_size=c.per_task_batch_size,
            n_negatives=c.n_negatives, lr=c.lr, warmup_steps=c.warmup_steps, temperature=c.temperature,
            query_max_length=c.query_max_length, passage_max_length=c.passage_max_length,
            taco_beta=c.taco_beta, taco_tau=c.taco_tau, taco_warmup_steps=c.taco_warmup_steps,
            taco_median=c.taco_median, seed=c.seed,
            output_dir=str(folder / "run"), progress=self.progress)
        key = _key(examples=_read_key(examples.parent / "stage.json"), train=asdict(train))
        with self._stage(f"train {name}"):
            if not self._cached(folder, key):
                result = MultitaskTrainer(train).train(resume=True)
                log.info("trained %s for %d steps in %.0f s", name, result.step, result.seconds)
                self._finish(folder, key)
        return str(folder / "run" / "final" / "model"), key

    def _dense(self, name: str):
        """Encode the passages with system `name`'s encoder, build a flat index, and search it."""
        from .encoder import DualEncoder
        from .encoding import encode_corpus
        from .indexing import Index, IndexConfig
        from .retriever import Retriever

        store = self.passages()
        encoder_path, encoder_key = self._encoder_path(name)
        encoder = DualEncoder.from_pretrained(encoder_path, **self._encoder_overrides(name))
        encoder.to(self._device()).eval()
        folder = self.work / "dense" / name
        key = _key(passages=self._passages_key(), encoder=encoder_key,
                   q=self.config.query_max_length, p=self.config.passage_max_length)
        with self._stage(f"index {name}"):
            if self._cached(folder, key):
                index = Index.load(folder / "index", expected_dim=encoder.dim)
            else:
                shards = encode_corpus(encoder, store.path, folder / "shards", shard_size=50_000,
                                       batch_size=self.config.encode_batch_size, progress=self.progress)
                index = Index.from_shards(shards, IndexConfig(index_type="flat"), progress=self.progress)
                index.save(folder / "index")
                shutil.rmtree(shards)
                self._finish(folder, key)
        return Retriever(encoder, index, store, batch_size=self.config.encode_batch_size)

    def _predict(self, name: str, search, rerank=None) -> SystemResult:
        """Predictions for every dev file, scored page-level; cached under predictions/<name>."""
        folder = self.work / "predictions" / name
        retriever_name, reranker_name = self._parse_system(name)
        capped = rerank is not None and self.config.rerank_queries > 0
        key = _key(retriever=self._retriever_key(retriever_name),
                   reranker=self._reranker_key(retriever_name, reranker_name) if reranker_name else None,
                   k=self.config.k, rerank_k=self.config.rerank_k if rerank is not None else 0,
                   rerank_queries=self.config.rerank_queries if capped else 0,
                   dev={t: _file_key(s["dev"]) for t, s in self.task_files.items()})
        per_task: dict[str, dict[str, float]] = {}
        queries: dict[str, dict[str, dict[str, float]]] = {}
        start = time.perf_counter()
        with self._stage(f"predict {name}"):
            cached = self._cached(folder, key)
            for task, splits in self.task_files.items():
                out = folder / f"{task}-dev.jsonl"
                gold = splits["dev"]
                if not cached:
                    self._write_predictions(search, task, gold, out, rerank)
                scores = per_query(gold, out, ks=(1, 5, 10), subset=capped, ndcg_ks=(10,))
                queries[task] = scores
                n = len(scores)
                per_task[task] = {m: sum(s[m] for s in scores.values()) / n for m in METRICS}
                per_task[task]["n"] = n
            if not cached:
                self._finish(folder, key)
        return SystemResult(per_task, queries, time.perf_counter() - start)

    def _write_predictions(self, search, task: str, gold: Path, out: Path, rerank=None) -> None:
        from .pipeline import Pipeline

        Pipeline(search, rerank).predict(gold, out, task=task, k=self.config.k,
                                         rerank_k=self.config.rerank_k if rerank is not None else 0,
                                         max_queries=self.config.rerank_queries if rerank is not None else 0,
                                         progress=self.progress)

    def system(self, name: str) -> SystemResult:
        if name in self._results:
            return self._results[name]
        start = time.perf_counter()
        retriever_name, reranker_name = self._parse_system(name)
        if reranker_name:
            reranker = self._reranker(reranker_name, retriever_name)
            result = self._predict(name, self.retriever(retriever_name), reranker)
        else:
            result = self._predict(name, self.retriever(name))
        result.seconds = time.perf_counter() - start
        self._results[name] = result
        return result

    def _parse_system(self, name: str) -> tuple[str, str | None]:
        """(retriever, reranker or None) of a system name; unknown names are ValueErrors."""
        retriever_name, _, reranker_name = name.partition("+")
        single = retriever_name.removeprefix("single-")
        if retriever_name not in RETRIEVERS and not (retriever_name.startswith("single-") and single in self.task_files):
            raise ValueError(f"unknown system {name!r}; known: {', '.join(RETRIEVERS)}, single-<task> for a task "
                             f"with files here, and <retriever>+<reranker>")
        if reranker_name and reranker_name not in RERANKERS and cross_encoder_schedule(reranker_name) is None:
            raise ValueError(f"unknown reranker {reranker_name!r} in {name!r}; known: {', '.join(RERANKERS)}, "
                             f"and cross-encoder.<stage>[.<stage>] schedules of {', '.join(CE_STAGES)}")
        stages = cross_encoder_schedule(reranker_name) if reranker_name else None
        if stages is not None:
            reranker_name = schedule_name(stages)
        if "distill" in (stages or []):
            if self.config.teacher not in RERANKERS:
                raise ValueError(f"unknown teacher {self.config.teacher!r}; known: {', '.join(RERANKERS)}")
            if self.config.distill_loss not in ("ranknet", "kl", "margin-mse"):
                raise ValueError(f"unknown distill_loss {self.config.distill_loss!r}; known: ranknet, kl, margin-mse")
        return retriever_name, reranker_name or None

    def _reranker(self, method: str, retriever_name: str):
        """Reranker `method`, fine-tuned on `retriever_name`'s top candidates for the train
        queries (zero-shot query likelihood is not trained); cached under rerankers/."""
        from .rerank.train import RerankTrainConfig, train_reranker

        stages = cross_encoder_schedule(method)
        if stages is not None:
            return self._cross_encoder(stages, retriever_name)
        start = self._reranker_start(method)
        folder = self.work / "rerankers" / f"{retriever_name}+{method}"
        c = self.config
        train = RerankTrainConfig(
            steps=c.reranker_steps, batch_size=c.reranker_batch_size, group_size=c.reranker_group_size,
            lr=c.llm_reranker_lr, seed=c.seed, output_dir=str(folder / "train"), progress=self.progress)
        key = _key(retriever=self._retriever_key(retriever_name), method=method, start=start,
                   train=asdict(train), loss=repr(self._reranker_loss(method)), max_train_queries=c.max_train_queries, rerank_k=c.rerank_k)
        with self._stage(f"reranker {retriever_name}+{method}"):
            reranker = self._new_reranker(method, start)
            if method == "zero-shot":
                return reranker
            if self._cached(folder, key):
                return self._load_reranker(method, folder / "train" / "final" / "reranker")
            examples = self._train_examples(retriever_name, method)
            result = train_reranker(reranker, examples, train, loss=self._reranker_loss(method), resume=True)
            log.info("trained %s on %d queries: loss %.4f -> %.4f", method, len(examples), result["losses"][0],
                     result["loss"])
            self._finish(folder, key)
            return reranker

    def _cross_encoder(self, stages: list[str], retriever_name: str):
        """A cross-encoder trained through `stages` in order: contrastive (listwise CE of the
        gold passage against the retriever's candidates) or distill (`distill_loss` towards the
        teacher's scores). Each stage starts from the cached model of the stages before it, so
        cross-encoder.contrastive.distill continues the plain cross-encoder."""
        from .rerank.train import RerankTrainConfig, train_reranker

        method = schedule_name(stages)
        folder = self.work / "rerankers" / f"{retriever_name}+{method}"
        c = self.config
        previous = None
        if len(stages) > 1:
            prefix = stages[:-1]
            previous = self._cross_encoder(prefix, retriever_name)
            start = self._reranker_key(retriever_name, schedule_name(prefix))
        else:
            start = self._reranker_start("cross-encoder")
        distill = stages[-1] == "distill"
        train = RerankTrainConfig(
            loss=c.distill_loss if distill else "lce", steps=c.cross_encoder_steps or c.reranker_steps,
            batch_size=c.reranker_batch_size, group_size=c.reranker_group_size, lr=c.reranker_lr, seed=c.seed,
            output_dir=str(folder / "train"), progress=self.progress)
        teacher = self._teacher_scores(retriever_name) if distill else None
        # a contrastive stage keys on loss=None, as the single-stage runs before schedules existed
        source = {"teacher": _read_key(teacher.parent / "stage.json")} if teacher else {"loss": repr(None)}
        key = _key(retriever=self._retriever_key(retriever_name), method=method, start=start, train=asdict(train),
                   **source, max_train_queries=c.max_train_queries, rerank_k=c.rerank_k)
        with self._stage(f"reranker {retriever_name}+{method}"):
            if self._cached(folder, key):
                return self._load_reranker("cross-encoder", folder / "train" / "final" / "reranker")
            reranker = previous if previous is not None else self._new_reranker("cross-encoder", start)
            if teacher is not None:
                from .rerank.examples import attach_teacher_scores, read_teacher_file

                examples = attach_teacher_scores(self._teacher_examples(retriever_name), read_teacher_file(teacher))
            else:
                examples = self._train_examples(retriever_name, method)
            result = train_reranker(reranker, examples, train, resume=True)
            log.info("trained %s (%s stage) on %d queries: loss %.4f -> %.4f", method, stages[-1], len(examples),
                     result["losses"][0], result["loss"])
            self._finish(folder, key)
            return reranker

    def _train_examples(self, retriever_name: str, method: str, per_task: int = 0):
        examples = self._rerank_examples(retriever_name, per_task)
        if not examples:
            raise ValueError(f"no training query of {', '.join(self.task_files)} has a gold page among "
                             f"{retriever_name}'s top {self.config.rerank_k}: nothing to train {method} on")
        return examples

    def _teacher_examples(self, retriever_name: str):
        return self._train_examples(retriever_name, "the teacher", self.config.teacher_queries)

    def _teacher_scores(self, retriever_name: str) -> Path:
        """The teacher's scores of the retriever's candidates for up to `teacher_queries` train
        queries per task (a `{"qid", "pid", "score"}` file, cached under teachers/)."""
        from .rerank.examples import write_teacher_file

        name = self.config.teacher
        teacher = self._reranker(name, retriever_name)
        folder = self.work / "teachers" / f"{retriever_name}+{name}"
        key = _key(teacher=self._reranker_key(retriever_name, name), queries=self.config.teacher_queries,
                   max_train_queries=self.config.max_train_queries, rerank_k=self.config.rerank_k)
        path = folder / "scores.jsonl"
        with self._stage(f"teacher {retriever_name}+{name}"):
            if not self._cached(folder, key):
                lines = write_teacher_file(teacher, self._teacher_examples(retriever_name), path,
                                           progress=self.progress)
                log.info("teacher %s scored %d (query, passage) pairs", name, lines)
                self._finish(folder, key)
        return path

    @staticmethod
    def _reranker_loss(method: str):
        """LLM rerankers: listwise CE plus the positive's query likelihood."""
        from .rerank.llm_scoring import ListwiseQueryLikelihood

        return ListwiseQueryLikelihood()

    def _reranker_start(self, method: str) -> str:
        from .models import packaged_minilm_path, resolve_llm

        if method == "cross-encoder":
            return self.config.cross_encoder or str(packaged_minilm_path())
        return str(resolve_llm(self.config.llm))

    def _new_reranker(self, method: str, start: str):
        """A fresh reranker, seeded: a new scoring head or module starts the same whatever ran before."""
        from accelerate.utils import set_seed

        from .rerank import make_reranker

        set_seed(self.config.seed)
        return make_reranker(method, start).to(self._device())

    def _load_reranker(self, method: str, path: Path):
        from .rerank import load_reranker

        return load_reranker(path).to(self._device())

    def _reranker_key(self, retriever_name: str, method: str) -> str:
        if method == "zero-shot":
            return _key(method=method, start=self._reranker_start(method))
        return json.loads((self.work / "rerankers" / f"{retriever_name}+{method}" / "stage.json").read_text())["key"]

    def _retriever_key(self, name: str) -> str:
        folder = self.work / ("bm25" if name == "bm25" else f"dense/{name}")
        return json.loads((folder / "stage.json").read_text())["key"]

    def _rerank_examples(self, retriever_name: str, per_task: int = 0):
        """Contrastive examples: each train query's gold passage vs the retriever's other top
        candidates (the first `per_task` train queries of each task when given)."""
        from .rerank.examples import examples_from_candidates

        search = self.retriever(retriever_name)
        examples = []
        for task, splits in self.task_files.items():
            if "train" not in splits:
                continue
            queries = read_task_file(splits["train"])
            for cap in (self.config.max_train_queries, per_task):
                if cap:
                    queries = queries[:cap]
            hits = []
            for i in range(0, len(queries), 256):
                hits += search.search([e.input for e in queries[i : i + 256]], task=task, k=self.config.rerank_k)
            examples += examples_from_candidates(queries, hits, self.passages())
        return examples

    # ----------------------------------------------------------------- report
    def significance(self) -> list[dict[str, Any]]:
        pairs = []
        names = list(self._results)
        if "taco" in names and "naive" in names:
            pairs.append(("taco", "naive"))
        pairs += [(n, n.split("+", 1)[0]) for n in names if "+" in n and n.split("+", 1)[0] in names]
        for n in names:  # each cross-encoder schedule against single-stage contrastive (the paper's question)
            retriever, _, reranker = n.partition("+")
            plain = f"{retriever}+cross-encoder"
            if reranker.startswith("cross-encoder.") and plain in names and n != plain:
                pairs.append((n, plain))
            upr = f"{retriever}+zero-shot"  # trained LLM rerankers against untrained query likelihood
            if reranker in RERANKERS and reranker not in ("cross-encoder", "zero-shot") and upr in names:
                pairs.append((n, upr))
        rows = []
        for a, b in pairs:
            ra, rb = self._results[a], self._results[b]
            all_a: list[float] = []
            all_b: list[float] = []
            for task in self.task_files:
                ids = [q for q in ra.per_query[task] if q in rb.per_query[task]]
                xa = [ra.per_query[task][q]["Rprec"] for q in ids]
                xb = [rb.per_query[task][q]["Rprec"] for q in ids]
                all_a += xa
                all_b += xb
                rows.append({"a": a, "b": b, "task": task, "metric": "Rprec",
                             **asdict(compare(xa, xb, seed=self.config.seed))})
            rows.append({"a": a, "b": b, "task": "all", "metric": "Rprec",
                         **asdict(compare(all_a, all_b, seed=self.config.seed))})
        return rows

    def run(self) -> dict[str, Any]:
        total = time.perf_counter()
        for name in self.config.systems:
            self.system(name)
        return {
            "machine": machine_info(),
            "data": {"data_dir": str(self.data_dir), "knowledge_source": str(self.knowledge_source),
                     "passages": len(self.passages()), "tasks": list(self.task_files),
                     "warnings": self._warnings},
            "config": asdict(self.config),
            "systems": {name: {"per_task": r.per_task, "avg": r.avg(), "seconds": round(r.seconds, 1)}
                        for name, r in self._results.items()},
            "significance": self.significance(),
            "stages": {k: round(v, 1) for k, v in self.timings.items()},
            "seconds": round(time.perf_counter() - total, 1),
        }


def markdown_table(doc: dict[str, Any]) -> str:
    """Per-task R-precision and recall@5 by system, with the means over tasks (and of nDCG@10,
    where the document has it) and the number of scored queries."""
    tasks = doc["data"]["tasks"]
    ndcg = all("ndcg@10" in r["avg"] for r in doc["systems"].values())
    head = ("| system | " + " | ".join(f"{t} Rprec | {t} R@5" for t in tasks) + " | avg Rprec | avg R@5 |"
            + (" avg nDCG@10 |" if ndcg else "") + " n |")
    rule = "|---" * (2 + 2 * len(tasks) + 2 + ndcg) + "|"
    lines = [head, rule]
    for name, r in doc["systems"].items():
        cells = []
        for t in tasks:
            m = r["per_task"][t]
            cells += [f"{m['Rprec']:.3f}", f"{m['recall@5']:.3f}"]
        cells += [f"{r['avg']['Rprec']:.3f}", f"{r['avg']['recall@5']:.3f}"]
        if ndcg:
            cells.append(f"{r['avg']['ndcg@10']:.3f}")
        cells.append(str(sum(int(r["per_task"][t]["n"]) for t in tasks)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(doc: dict[str, Any], path: str | Path) -> None:
    """PNG bar chart of per-task R-precision by system, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = doc["data"]["tasks"]
    systems = list(doc["systems"])
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks) + 2), 4))
    for i, name in enumerate(systems):
        values = [doc["systems"][name]["per_task"][t]["Rprec"] for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(systems) - 1) / 2, tasks)
    ax.set_ylabel("page-level R-precision (dev)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, mode="wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_report(doc: dict[str, Any], out: str | Path) -> tuple[Path, Path, Path]:
    """FILE.json, FILE.md and FILE.png side by side."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        json.dump(doc, f, indent=1)
    md = out.with_suffix(".md")
    with atomic_write(md) as f:
        f.write(markdown_table(doc) + "\n")
    png = out.with_suffix(".png")
    bar_chart(doc, png)
    return out, md, png
