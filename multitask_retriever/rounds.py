"""ANCE-style hard-negative rounds (`mtr train --negative-rounds N`): train, mine hard negatives
with the model just trained, train on from its weights on them; N times after the first run.
`training.train` runs them when a config asks for them.

    OUTPUT_DIR/round-0/                   the first run (negatives as configured, e.g. BM25)
    OUTPUT_DIR/round-K/negatives.jsonl    mined with round K-1's final model (inputs recorded beside it)
    OUTPUT_DIR/round-K/final/model        round K's model; the last round's is the result

Each round is a plain `MultitaskTrainer` run, so it resumes exactly and refuses other settings;
as in the official recipe, a round starts with the previous round's combiner state (TACO's EMAs)
and optimiser moments (kept in each round's final folder, so that a run can be extended by more
rounds), with a fresh learning-rate schedule;
finished rounds are not redone, and a negatives file is reused only if mined from the same model,
passages and settings. The vectors encoded for mining are deleted once the negatives are written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from safeio.identity import file_version

from .config import replace_places
from .data import PASSAGES_NAME, is_cached, task_train_files
from .trainer import MODEL_DIR, MultitaskTrainer, TrainConfig, TrainResult, round_dir
from .training_loop import FINAL_NAME, latest_checkpoint

log = logging.getLogger("mtr.train")

NEGATIVES_NAME = "negatives.jsonl"


def _folder_inputs(folder: Path) -> dict[str, Any]:
    """Path, size and mtime of every file in a model folder (a retrained model differs); hidden
    files are not the model."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {"path": str(folder.resolve()), "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def mine_negatives(model: Path, out: Path, passage_file: Path, config: TrainConfig) -> Path:
    """Hard negatives for the training queries of `config` from `model`'s top hits, written to
    `out` (reused if mined from the same inputs); the corpus vectors are encoded into resumable
    shards beside `out` and deleted once the negatives are written."""
    from .distributed import distributed_state
    from .encoder import DualEncoder
    from .encoding import encode_corpus
    from .mining import mine_examples

    cfg, data = config, config.data
    files = task_train_files(data.dir, data.tasks)
    inputs = {"model": _folder_inputs(model), "passages": file_version(passage_file),
              "task_files": {t: file_version(f) for t, f in files.items()},
              "depth": data.negative_depth, "keep": data.negatives_per_query, "max_queries": data.max_train_queries}
    state = distributed_state()
    if not is_cached(out, inputs):
        if latest_checkpoint(out.parent) is not None:
            raise ValueError(f"{out.parent}: holds training on negatives mined from other inputs than "
                             f"{model} and these settings give; delete {out.parent} to train the round again")
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
        shards = out.parent / f"shards-{digest}"  # other inputs' shards are never resumed
        encoder = DualEncoder.from_pretrained(model).to(state.device)
        encode_corpus(encoder, passage_file, shards, progress=cfg.progress)  # every process its shards
        mine_examples(encoder, shards, passage_file, files, out, inputs, state, depth=data.negative_depth,
                      keep=data.negatives_per_query, max_queries=data.max_train_queries,
                      progress=cfg.progress)  # every process its share of the queries
    if state.is_main_process:
        for shards in out.parent.glob("shards-*"):
            shutil.rmtree(shards, ignore_errors=True)
    return out


def train_with_rounds(config: TrainConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Round 0 as configured, then `config.data.negative_rounds` rounds on negatives mined by the
    previous round's model (module doc); returns the last round's result. `stop_after` ends the
    call after that many steps in all (each round is `config.optim.steps` long), as a kill would."""
    cfg, rounds, steps = config, config.data.negative_rounds, config.optim.steps
    if rounds < 1:
        raise ValueError(f"negative_rounds must be >= 1 here, got {rounds}")
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    output_dir = Path(cfg.output_dir)
    if latest_checkpoint(output_dir) is not None:
        raise ValueError(f"{output_dir}: holds a run without negative rounds; resume it with negative_rounds 0, "
                         "or choose another output_dir")
    passage_file = Path(cfg.data.passages) if cfg.data.passages else round_dir(output_dir, 0) / PASSAGES_NAME
    round_cfg = replace_places(cfg, {"output_dir": str(round_dir(output_dir, 0)), "data.negative_rounds": 0})
    result: TrainResult | None = None
    for k in range(rounds + 1):
        left = None if stop_after is None else stop_after - k * steps
        if left is not None and left <= 0:
            break
        if k:
            previous = round_dir(output_dir, k - 1) / FINAL_NAME / MODEL_DIR
            folder = round_dir(output_dir, k)
            negatives = mine_negatives(previous, folder / NEGATIVES_NAME, passage_file, cfg)
            round_cfg = replace_places(cfg, {"model.name_or_path": str(previous), "data.passages": str(passage_file),
                                             "data.negatives": str(negatives), "output_dir": str(folder),
                                             "data.negative_rounds": 0})
            log.info("round %d of %d: training from %s on %s", k, rounds, previous, negatives)
        carry = round_dir(output_dir, k - 1) / FINAL_NAME if k else None
        result = MultitaskTrainer(round_cfg).train(resume=resume, stop_after=left if left and left < steps
                                                   else None, carry_from=carry, keep_optimizer=True)
        if left is not None and left < steps:
            break
    assert result is not None
    return result
