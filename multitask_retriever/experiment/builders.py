"""The systems a run scores, built through the library and cached stage by stage: passages,
BM25, training data, fine-tuned dual encoders and their indexes, rerankers, teacher scores."""
from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from kilt.io import iter_pages, read_task_file, write_task_records
from kilt.tasks import query_group
from kilt.passages import PassageStore, write_passages

from ..config import flat_fields
from ..devices import resolve_device
from ..rerank.base import default_passage_text
from ..rerank.fusion import Fusion
from ..rerank.losses import make_loss
from ..rerank.train import RerankTrainConfig
from ..trainer import MODEL_DIR, TrainConfig
from ..training_loop import FINAL_NAME
from .cache import StageCache, file_key, read_key, stage_key
from .config import ExperimentConfig
from .systems import check_teacher, cross_encoder_schedule, schedule_name

log = logging.getLogger("mtr.experiment")


# --------------------------------------------------------------------------- library configs and stage keys
def train_config(c: ExperimentConfig, method: str, tasks: list[str], start: str, data_dir: str, passages: str,
                 negatives: str, output_dir: str, progress: bool) -> TrainConfig:
    """The TrainConfig of a fine-tuned dual encoder (`method`: a combiner or single)."""
    return TrainConfig(
        model_name_or_path=start, data_dir=data_dir, passages=passages, tasks=tasks, method=method,
        negatives=negatives, steps=c.steps, per_task_batch_size=c.per_task_batch_size, n_negatives=c.n_negatives,
        lr=c.lr, warmup_steps=c.warmup_steps, warmup_ratio=c.warmup_ratio, task_temperature=c.task_temperature,
        negative_sampling=c.negative_sampling, query_prompt_style=c.query_prompt_style, temperature=c.temperature, query_max_length=c.query_max_length,
        passage_max_length=c.passage_max_length, taco=c.taco, seed=c.seed, output_dir=output_dir, progress=progress)


#: how rerankers read their inputs, in every reranker's stage key: a change here retrains them
RERANK_INPUTS = {"query_cut": "task-aware"}

#: the naive base model every fine-tuned system continues from under `base_steps`
BASE_RUN = "naive-base"

#: TrainConfig fields added after stage keys were first pinned: keyed only when set, so the
#: finished stages of earlier work folders keep their keys
_LATER_TRAIN_FIELDS = {"negative_rounds": 0, "warmup_ratio": 0.0, "task_temperature": 0.0,
                       "negative_sampling": "sample", "query_prompt_style": "", "init_from": ""}


def train_stage_key(examples_key: str | None, train: TrainConfig) -> str:
    """A dual-encoder training stage's key: its training data's key and every TrainConfig field,
    sections spelled flat (taco_beta, ...)."""
    fields = {k: v for k, v in flat_fields(train).items()
              if k not in _LATER_TRAIN_FIELDS or v != _LATER_TRAIN_FIELDS[k]}
    if train.method != "taco":  # added later, and only TACO reads it: other methods keep their keys
        fields.pop("taco_scale")
    if train.method in ("pcgrad", "cgd") and train.warmup_ratio:  # their naive warm-up became opt-in
        fields["warmup_ratio_scope"] = "taco"
    if train.negative_rounds:  # rounds now carry the combiner and optimiser state
        fields["round_state"] = "carried"
    return stage_key(examples=examples_key, train=fields)


def llm_reranker_train_config(c: ExperimentConfig, loss: str, output_dir: str, progress: bool,
                              steps: int = 0) -> RerankTrainConfig:
    return RerankTrainConfig(loss=loss, steps=steps or c.reranker_steps, batch_size=c.reranker_batch_size,
                             group_size=c.reranker_group_size, lr=c.llm_reranker_lr, seed=c.seed,
                             output_dir=output_dir, progress=progress)


def llm_reranker_key(retriever_key: str, method: str, start: str, train: RerankTrainConfig,
                     max_train_queries: int, rerank_k: int, **holdout: Any) -> str:
    """An LLM reranker stage's key. The loss enters as the repr of its object and the config with
    the default loss name, the spelling stamped on existing work folders."""
    keyed = dataclasses.replace(train, loss=RerankTrainConfig.loss)
    loss = make_loss(train.loss, **train.loss_options)
    return stage_key(retriever=retriever_key, method=method, start=start, train=dataclasses.asdict(keyed),
                     loss=repr(loss), max_train_queries=max_train_queries, rerank_k=rerank_k, **holdout)


def cross_encoder_train_config(c: ExperimentConfig, distill: bool, output_dir: str,
                               progress: bool, steps: int = 0) -> RerankTrainConfig:
    """A cross-encoder stage: contrastive (LCE) or distillation (`distill_loss`)."""
    return RerankTrainConfig(
        loss=c.distill_loss if distill else "lce", steps=steps or c.cross_encoder_steps or c.reranker_steps,
        batch_size=c.reranker_batch_size, group_size=c.reranker_group_size, lr=c.reranker_lr, seed=c.seed,
        output_dir=output_dir, progress=progress)


# --------------------------------------------------------------------------- stages
class SystemBuilder:
    """Builds (or loads from the stage cache) the retrievers and rerankers that systems name."""

    def __init__(self, config: ExperimentConfig, knowledge_source: Path, task_files: dict[str, dict[str, Path]],
                 cache: StageCache, progress: bool = True):
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.knowledge_source = knowledge_source
        self.task_files = task_files
        self.cache = cache
        self.work = cache.work
        self.progress = progress
        self.warnings: list[str] = []
        self.device = resolve_device(config.device)
        self._store: PassageStore | None = None
        self._splits: dict[str, tuple[list, list]] = {}
        self._retrievers: dict[str, Any] = {}

    # ----------------------------------------------------------------- passages
    def passages(self) -> PassageStore:
        if self._store is None:
            folder = self.work / "passages"
            stat = self.knowledge_source.stat()
            key = stage_key(source=str(self.knowledge_source.resolve()), size=stat.st_size, mtime=stat.st_mtime,
                            words=self.config.passage_words)
            with self.cache.stage("passages"):
                if not self.cache.cached(folder, key):
                    n = write_passages(self.knowledge_source, folder / "passages.jsonl",
                                       words=self.config.passage_words)
                    log.info("chunked %s into %d passages", self.knowledge_source, n)
                    self.cache.finish(folder, key)
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
                    self.warnings.append(msg)

    def _passages_key(self) -> str:
        return self.cache.key(self.work / "passages")

    # ----------------------------------------------------------------- retrievers
    def retriever(self, name: str):
        """A search backend for a retriever system name (built or loaded on first use)."""
        if name not in self._retrievers:
            self._retrievers[name] = self._bm25() if name == "bm25" else self._dense(name)
        return self._retrievers[name]

    def retriever_key(self, name: str) -> str:
        return self.cache.key(self.work / ("bm25" if name == "bm25" else f"dense/{name}"))

    def _bm25(self):
        from kilt.bm25 import BM25Retriever

        store = self.passages()
        folder = self.work / "bm25"
        key = stage_key(passages=self._passages_key())
        with self.cache.stage("bm25-index"):
            if self.cache.cached(folder, key):
                return BM25Retriever.load(folder / "index", store)
            backend = BM25Retriever.build(store)
            backend.save(folder / "index")
            self.cache.finish(folder, key)
            return backend

    def _encoder_path(self, name: str) -> tuple[str, str]:
        """(folder or name of the DualEncoder for system `name`, its stage key)."""
        from ..models import packaged_minilm_path

        start = self.config.encoder or str(packaged_minilm_path())
        if name == "zero-shot":
            return start, stage_key(encoder=start, prompts=self.config.zero_shot_prompts)
        if self.config.base_steps:
            base, base_key = self._train_encoder(BASE_RUN, start)
            return self._train_encoder(name, base, base_key)
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
        from ..data import build_training_examples, write_training_examples

        tasks = self.train_tasks()
        if not tasks:
            raise FileNotFoundError(f"{self.data_dir}: no <task>-train-kilt.jsonl files to fine-tune on")
        folder = self.work / "train-data"
        files = {t: self.task_files[t]["train"] for t in tasks}
        held_out = self.config.fusion_holdout_retriever and self.config.fusion_validation
        key = stage_key(passages=self._passages_key(), files={t: file_key(p) for t, p in files.items()},
                        max_train_queries=self.config.max_train_queries,
                        **({"held_out": self._holdout_key()} if held_out else {}))
        bm25 = self.retriever("bm25")
        with self.cache.stage("training data"):
            if not self.cache.cached(folder, key):
                if held_out:  # the dual encoder trains on what the rerankers train on
                    (folder / "queries").mkdir(parents=True, exist_ok=True)
                    for t, path in list(files.items()):
                        files[t] = folder / "queries" / path.name
                        write_task_records(files[t], path, [q.id for q in self.train_queries(t)])
                examples = build_training_examples(files, self.passages(), bm25,
                                                   max_queries=self.config.max_train_queries, progress=self.progress)
                write_training_examples(folder / "examples.jsonl", examples)
                self.cache.finish(folder, key)
        return folder / "examples.jsonl"

    def _train_encoder(self, name: str, start: str, start_key: str = "") -> tuple[str, str]:
        """Fine-tune `start` with the project's trainer: a gradient combiner over every task, or
        single-<task>; `BASE_RUN` is the naive base of the two-phase protocol (`base_steps`), and
        `start_key` the stage key of a trained start (its content, where the path says nothing)."""
        from ..training import train as train_encoder

        method, tasks = ("single", [name.removeprefix("single-")]) if name.startswith("single-") \
            else ("naive" if name == BASE_RUN else name.partition(".")[0], self.train_tasks())
        if method == "single" and "train" not in self.task_files[tasks[0]]:
            raise FileNotFoundError(f"{self.data_dir}: no {tasks[0]}-train-kilt.jsonl for {name}")
        examples = self._training_examples()
        folder = self.training_run(name).parent
        train = train_config(self.config, method, tasks, start, str(self.data_dir), str(self.passages().path),
                             str(examples), str(self.training_run(name)), self.progress)
        if name == BASE_RUN:
            seed = self.config.seed if self.config.base_seed < 0 else self.config.base_seed
            train = dataclasses.replace(train, steps=self.config.base_steps, seed=seed)
        elif name.startswith("taco."):  # taco.<scale>
            train = dataclasses.replace(train, taco=dataclasses.replace(train.taco, scale=name.partition(".")[2]))
        keyed = train
        if name == BASE_RUN:  # shared by the runs of a seed study: its key names contents, not their paths
            keyed = dataclasses.replace(train, data_dir="", passages="", negatives="", output_dir="")
        key = train_stage_key(read_key(examples.parent / "stage.json"), keyed)
        if start_key:
            key = stage_key(train=key, start=start_key)
        with self.cache.stage(f"train {name}"):
            if not self.cache.cached(folder, key):
                result = train_encoder(train, resume=True)
                log.info("trained %s for %d steps in %.0f s", name, result.step, result.seconds)
                self.cache.finish(folder, key)
        return str(self.training_run(name) / FINAL_NAME / MODEL_DIR), key

    def training_run(self, name: str) -> Path:
        """The trainer's output folder of fine-tuned system `name` (checkpoints, final/, log)."""
        if name == BASE_RUN and self.config.base_dir:
            return Path(self.config.base_dir) / "run"
        return self.work / "train" / name / "run"

    def _dense(self, name: str):
        """Encode the passages with system `name`'s encoder, build a flat index, and search it."""
        from ..encoder import DualEncoder
        from ..encoding import encode_corpus
        from ..indexing import Index, IndexConfig
        from ..retriever import Retriever

        store = self.passages()
        encoder_path, encoder_key = self._encoder_path(name)
        encoder = DualEncoder.from_pretrained(encoder_path, **self._encoder_overrides(name))
        encoder.to(self.device).eval()
        folder = self.work / "dense" / name
        key = stage_key(passages=self._passages_key(), encoder=encoder_key,
                        q=self.config.query_max_length, p=self.config.passage_max_length)
        with self.cache.stage(f"index {name}"):
            if self.cache.cached(folder, key):
                index = Index.load(folder / "index", expected_dim=encoder.dim, device=self.config.device)
            else:
                shards = encode_corpus(encoder, store.path, folder / "shards", shard_size=50_000,
                                       batch_size=self.config.encode_batch_size, progress=self.progress)
                index = Index.from_shards(shards, IndexConfig(index_type="flat", device=self.config.device),
                                          progress=self.progress)
                index.save(folder / "index")
                shutil.rmtree(shards)
                self.cache.finish(folder, key)
        return Retriever(encoder, index, store, batch_size=self.config.encode_batch_size)

    # ----------------------------------------------------------------- rerankers
    def reranker(self, method: str, retriever_name: str):
        """Reranker `method`, fine-tuned on `retriever_name`'s top candidates for the train
        queries (zero-shot query likelihood is not trained); cached under rerankers/."""
        from ..rerank import reranker_class
        from ..rerank.train import train_reranker

        self.retriever(retriever_name)  # its stage key enters the reranker's
        stages = cross_encoder_schedule(method)
        if stages is not None:
            return self._cross_encoder(stages, retriever_name)
        start = self._reranker_start(method)
        folder = self.work / "rerankers" / f"{retriever_name}+{method}"
        c = self.config
        train = llm_reranker_train_config(c, c.llm_reranker_loss or reranker_class(method).training_loss,
                                          str(folder / "train"),
                                          self.progress, self._epoch_steps())
        key = llm_reranker_key(self.retriever_key(retriever_name), method, start, train, c.max_train_queries,
                               c.rerank_k, **self._rerank_data_key())
        with self.cache.stage(f"reranker {retriever_name}+{method}"):
            reranker = self._new_reranker(method, start)
            if method == "zero-shot":
                return reranker
            if self.cache.cached(folder, key):
                return self._load_reranker(folder / "train" / "final" / "reranker")
            examples = self._train_examples(retriever_name, method)
            result = train_reranker(reranker, examples, train, resume=True)
            log.info("trained %s on %d queries: loss %.4f -> %.4f", method, len(examples), result.losses[0],
                     result.loss)
            self.cache.finish(folder, key)
            return reranker

    def _cross_encoder(self, stages: list[str], retriever_name: str):
        """A cross-encoder trained through `stages` in order: contrastive (listwise CE of the
        gold passage against the retriever's candidates) or distill (`distill_loss` towards the
        teacher's scores). Each stage starts from the cached model of the stages before it, so
        cross-encoder.contrastive.distill continues the plain cross-encoder."""
        from ..rerank.examples import attach_teacher_scores, read_teacher_file
        from ..rerank.train import train_reranker

        method = schedule_name(stages)
        folder = self.work / "rerankers" / f"{retriever_name}+{method}"
        c = self.config
        previous = None
        if len(stages) > 1:
            prefix = stages[:-1]
            previous = self._cross_encoder(prefix, retriever_name)
            start = self.reranker_key(retriever_name, schedule_name(prefix))
        else:
            start = self._reranker_start("cross-encoder")
        distill = stages[-1] == "distill"
        train = cross_encoder_train_config(c, distill, str(folder / "train"), self.progress, self._epoch_steps())
        teacher = self._teacher_scores(retriever_name) if distill else None
        # a contrastive stage keys on loss=None: its loss is the one its config names
        source = {"teacher": read_key(teacher.parent / "stage.json")} if teacher else {"loss": repr(None)}
        key = stage_key(retriever=self.retriever_key(retriever_name), method=method, start=start,
                        train=dataclasses.asdict(train), **source, max_train_queries=c.max_train_queries,
                        rerank_k=c.rerank_k, **self._rerank_data_key())
        with self.cache.stage(f"reranker {retriever_name}+{method}"):
            if self.cache.cached(folder, key):
                return self._load_reranker(folder / "train" / "final" / "reranker")
            reranker = previous if previous is not None else self._new_reranker("cross-encoder", start)
            if teacher is not None:
                examples = attach_teacher_scores(self._teacher_examples(retriever_name), read_teacher_file(teacher))
            else:
                examples = self._train_examples(retriever_name, method)
            result = train_reranker(reranker, examples, train, resume=True)
            log.info("trained %s (%s stage) on %d queries: loss %.4f -> %.4f", method, stages[-1], len(examples),
                     result.losses[0], result.loss)
            self.cache.finish(folder, key)
            return reranker

    def reranker_key(self, retriever_name: str, method: str) -> str:
        if method == "zero-shot":
            return stage_key(method=method, start=self._reranker_start(method), **RERANK_INPUTS)
        return self.cache.key(self.work / "rerankers" / f"{retriever_name}+{method}")

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
        from ..rerank.examples import write_teacher_file

        name = check_teacher(self.config.teacher)
        teacher = self.reranker(name, retriever_name)
        folder = self.work / "teachers" / f"{retriever_name}+{name}"
        key = stage_key(teacher=self.reranker_key(retriever_name, name), queries=self.config.teacher_queries,
                        max_train_queries=self.config.max_train_queries, rerank_k=self.config.rerank_k,
                        **self._rerank_data_key())
        path = folder / "scores.jsonl"
        with self.cache.stage(f"teacher {retriever_name}+{name}"):
            if not self.cache.cached(folder, key):
                lines = write_teacher_file(teacher, self._teacher_examples(retriever_name), path,
                                           progress=self.progress)
                log.info("teacher %s scored %d (query, passage) pairs", name, lines)
                self.cache.finish(folder, key)
        return path

    def _reranker_start(self, method: str) -> str:
        """The start model of a reranker, spelled out (it is part of the stage key)."""
        from ..models import packaged_minilm_path, resolve_llm

        if method == "cross-encoder":
            return self.config.cross_encoder or str(packaged_minilm_path())
        return str(resolve_llm(self.config.llm))

    def _new_reranker(self, method: str, start: str):
        """A fresh reranker, seeded: a new scoring head or module starts the same whatever ran before."""
        from accelerate.utils import set_seed

        from ..rerank import make_reranker

        set_seed(self.config.seed)
        return make_reranker(method, start).to(self.device)

    def _load_reranker(self, path: Path):
        from ..rerank import load_reranker

        return load_reranker(path).to(self.device)

    # ----------------------------------------------------------------- hold-out and fusion
    def _split(self, task: str) -> tuple[list, list]:
        """(training, validation) queries of `task`: the capped train file, split by the hash of
        each query's group (a conversation, document or subject never sits on both sides; read
        and split once per run)."""
        from ..rerank.fusion import split_validation

        if task not in self._splits:
            queries = read_task_file(self.task_files[task]["train"])
            if self.config.max_train_queries:
                queries = queries[: self.config.max_train_queries]
            self._splits[task] = split_validation(queries, self.config.fusion_validation, seed=self.config.seed,
                                                  minimum=self.config.fusion_min_validation,
                                                  key=lambda e: query_group(e.id, e.meta, task))
        return self._splits[task]

    def train_queries(self, task: str) -> list:
        """The queries rerankers train on: the train file less the fusion validation part."""
        return self._split(task)[0]

    def validation_queries(self, task: str) -> list:
        """Training-file queries held out from reranker training, for fitting the fusion weights."""
        return self._split(task)[1]

    def _holdout_key(self) -> dict[str, Any]:
        """The grouped hold-out of fusion validation queries, as stage keys hold it (empty when unused)."""
        c = self.config
        if not c.fusion_validation:
            return {}
        return {"fusion_validation": c.fusion_validation, "grouped": True,
                **({"fusion_min_validation": c.fusion_min_validation} if c.fusion_min_validation else {})}

    def _rerank_data_key(self) -> dict[str, Any]:
        """What the rerankers' inputs add to their stage keys: the task-aware query cut, the
        hold-out and the epoch sizing (the last two only when used)."""
        epochs = self.config.reranker_epochs
        return {**RERANK_INPUTS, **self._holdout_key(), **({"epochs": epochs} if epochs else {})}

    def _epoch_steps(self) -> int:
        """Steps of `reranker_epochs` passes over the training queries (0 when not asked for)."""
        if not self.config.reranker_epochs:
            return 0
        n = sum(len(self.train_queries(t)) for t, splits in self.task_files.items() if "train" in splits)
        return max(1, math.ceil(self.config.reranker_epochs * n / self.config.reranker_batch_size))

    def fusion(self, retriever_name: str, reranker_name: str, reranker) -> Fusion:
        """Interpolation weights fitted on the validation queries' top `rerank_k` candidates
        (held out from the reranker's training; never dev queries); cached under fusion/."""
        from ..rerank.fusion import FusionQuery, fit_alpha

        c = self.config
        folder = self.work / "fusion" / f"{retriever_name}+{reranker_name}"
        key = stage_key(retriever=self.retriever_key(retriever_name),
                        reranker=self.reranker_key(retriever_name, reranker_name), rerank_k=c.rerank_k,
                        per_task=c.fusion_per_task, **self._rerank_data_key())
        with self.cache.stage(f"fusion {retriever_name}+{reranker_name}"):
            if self.cache.cached(folder, key):
                return Fusion.load(folder)
            search, queries = self.retriever(retriever_name), []
            for task, splits in self.task_files.items():
                if "train" not in splits:
                    continue
                examples = self.validation_queries(task)
                for i in range(0, len(examples), 64):
                    chunk = examples[i : i + 64]
                    hits = search.search([e.input for e in chunk], task=task, k=c.rerank_k)
                    scores = reranker.rerank_many([e.input for e in chunk],
                                                  [[default_passage_text(h) for h in row] for row in hits],
                                                  tasks=[task] * len(chunk))
                    for example, row, row_scores in zip(chunk, hits, scores):
                        gold = set(example.gold_pages)
                        queries.append(FusionQuery(task, [h.score for h in row], row_scores,
                                                   [h.wikipedia_id in gold for h in row],
                                                   [h.wikipedia_id for h in row]))
            fusion = fit_alpha(queries, per_task=c.fusion_per_task)
            log.info("fusion %s+%s: alpha %.2f, per task %s (fitted on %d validation queries)", retriever_name,
                     reranker_name, fusion.alpha, fusion.task_alphas, len(queries))
            fusion.save(folder)
            trained = self.work / "rerankers" / f"{retriever_name}+{reranker_name}" / "train" / "final" / "reranker"
            if trained.is_dir():  # beside the reranker too, where `mtr pipeline --fusion fitted` reads it
                fusion.save(trained)
            self.cache.finish(folder, key)
            return fusion

    def _rerank_examples(self, retriever_name: str, per_task: int = 0):
        """Contrastive examples: each train query's gold passage vs the retriever's other top
        candidates (the first `per_task` train queries of each task when given)."""
        from ..rerank.examples import examples_from_candidates

        search = self.retriever(retriever_name)
        examples = []
        for task, splits in self.task_files.items():
            if "train" not in splits:
                continue
            queries = self.train_queries(task)
            if per_task:
                queries = queries[:per_task]
            hits = []
            for i in range(0, len(queries), 256):
                hits += search.search([e.input for e in queries[i : i + 256]], task=task, k=self.config.rerank_k)
            examples += examples_from_candidates(queries, hits, self.passages(), task=task)
        return examples
