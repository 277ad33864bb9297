"""Dual-encoder fine-tuning stages: the shared training data (hard negatives from BM25), the
naive base of the two-phase protocol, and each fine-tuned system's model."""
from __future__ import annotations

import logging
from pathlib import Path

from kilt.io import write_task_records
from safeio.identity import file_version

from ...config import replace_places
from ...trainer import MODEL_DIR, TrainConfig
from ...training_loop import FINAL_NAME
from ..cache import read_key, stage_key
from .context import StageContext
from .corpus import CorpusStages
from .keys import BASE_RUN, train_config, train_stage_key
from .splits import HoldOut

log = logging.getLogger("mtr.experiment")


class EncoderStages:
    """The DualEncoder of each retriever system: the start encoder (zero-shot) or one fine-tuned
    by the project's trainer, from the start or from the naive base (`base_steps`)."""

    def __init__(self, context: StageContext, corpus: CorpusStages, holdout: HoldOut):
        self.context = context
        self.corpus = corpus
        self.holdout = holdout

    def encoder_path(self, name: str) -> tuple[str, str]:
        """(folder or name of the DualEncoder for system `name`, its stage key)."""
        from ...models import packaged_minilm_path

        c = self.context.config
        start = c.encoder or str(packaged_minilm_path())
        if name == "zero-shot":
            return start, stage_key(encoder=start, prompts=c.zero_shot_prompts)
        if c.base_steps:
            base, base_key = self.train_encoder(BASE_RUN, start)
            return self.train_encoder(name, base, base_key)
        return self.train_encoder(name, start)

    def training_run(self, name: str) -> Path:
        """The trainer's output folder of fine-tuned system `name` (checkpoints, final/, log)."""
        c = self.context.config
        if name == BASE_RUN and c.base_dir:
            return Path(c.base_dir) / "run"
        return self.context.work / "train" / name / "run"

    def training_examples(self) -> Path:
        """Training examples of every task with a train file, hard negatives from BM25; built once
        and shared by every fine-tuned system."""
        from ...data import build_training_examples
        from ...examples import write_training_examples

        ctx, c = self.context, self.context.config
        tasks = ctx.train_tasks()
        if not tasks:
            raise FileNotFoundError(f"{ctx.data_dir}: no <task>-train-kilt.jsonl files to fine-tune on")
        folder = ctx.work / "train-data"
        files = {t: ctx.task_files[t]["train"] for t in tasks}
        held_out = c.fusion_holdout_retriever and c.fusion_validation
        key = stage_key(passages=self.corpus.passages_key(), files={t: file_version(p) for t, p in files.items()},
                        max_train_queries=c.max_train_queries, **({"held_out": self.holdout.key()} if held_out else {}))
        bm25 = self.corpus.bm25()
        with ctx.cache.stage("training data"):
            if not ctx.cache.cached(folder, key):
                if held_out:  # the dual encoder trains on what the rerankers train on
                    (folder / "queries").mkdir(parents=True, exist_ok=True)
                    for t, path in list(files.items()):
                        files[t] = folder / "queries" / path.name
                        write_task_records(files[t], path, [q.id for q in self.holdout.train_queries(t)])
                examples = build_training_examples(files, self.corpus.passages(), bm25,
                                                   max_queries=c.max_train_queries, progress=ctx.progress)
                write_training_examples(folder / "examples.jsonl", examples)
                ctx.cache.finish(folder, key)
        return folder / "examples.jsonl"

    def _method(self, name: str) -> tuple[str, list[str]]:
        """(TrainConfig method, tasks) of system `name`: a gradient combiner over every task,
        single-<task>, or naive for `BASE_RUN`."""
        ctx = self.context
        method, tasks = ("single", [name.removeprefix("single-")]) if name.startswith("single-") \
            else ("naive" if name == BASE_RUN else name.partition(".")[0], ctx.train_tasks())
        if method == "single" and "train" not in ctx.task_files[tasks[0]]:
            raise FileNotFoundError(f"{ctx.data_dir}: no {tasks[0]}-train-kilt.jsonl for {name}")
        return method, tasks

    def _train_config(self, name: str, method: str, tasks: list[str], start: str, examples: Path) -> TrainConfig:
        """System `name`'s TrainConfig; `BASE_RUN` trains `base_steps` with `base_seed`, and
        taco.<scale> sets TACO's update scale."""
        ctx, c = self.context, self.context.config
        train = train_config(c, method, tasks, start, str(ctx.data_dir), str(self.corpus.passages().path),
                             str(examples), str(self.training_run(name)), ctx.progress)
        if name == BASE_RUN:
            seed = c.seed if c.base_seed < 0 else c.base_seed
            train = replace_places(train, {"optim.steps": c.base_steps, "seed": seed})
        elif name.startswith("taco."):  # taco.<scale>
            train = replace_places(train, {"taco.scale": name.partition(".")[2]})
        return train

    def train_encoder(self, name: str, start: str, start_key: str = "") -> tuple[str, str]:
        """Fine-tune `start` for system `name`; `start_key` is the stage key of a trained start
        (its content, where the path says nothing). Returns (the final model's folder, stage key)."""
        from ...training import train as run_training

        cache = self.context.cache
        method, tasks = self._method(name)  # a missing train file stops before any work
        examples = self.training_examples()
        train = self._train_config(name, method, tasks, start, examples)
        keyed = train
        if name == BASE_RUN:  # shared by the runs of a seed study: its key names contents, not their paths
            keyed = replace_places(train, {"data.dir": "", "data.passages": "", "data.negatives": "", "output_dir": ""})
        key = train_stage_key(read_key(examples.parent / "stage.json"), keyed)
        if start_key:
            key = stage_key(train=key, start=start_key)
        folder = self.training_run(name).parent
        with cache.stage(f"train {name}"):
            if not cache.cached(folder, key):
                result = run_training(train, resume=True)
                log.info("trained %s for %d steps in %.0f s", name, result.step, result.seconds)
                cache.finish(folder, key)
        return str(self.training_run(name) / FINAL_NAME / MODEL_DIR), key
