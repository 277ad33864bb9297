"""Build and score every system on a KILT folder: the quickstart and `mtr benchmark-quality`.

Everything goes through the public API (chunking, BM25, DualEncoder, Index, Retriever,
MultitaskTrainer, rerankers, Pipeline, kilt.eval); nothing is special-cased for any data
set. Each stage caches its output in the work folder under a key of its settings, so a
second run with the same settings reuses finished stages (`fresh=True` redoes them).

    config.py       ExperimentConfig            systems.py     system names
    cache.py        the stage cache              builders.py    SystemBuilder: composes stages/ (one per build step)
    evaluation.py   dev scores, significance     report.py      markdown, PNG, JSON
    runner.py       Experiment                   seeds.py       SeedStudy: one experiment, several seeds
"""
from .config import DEFAULT_SYSTEMS, ExperimentConfig, RerankSection, TrainSection
from .report import bar_chart, markdown_table, seed_study_table, write_report
from .runner import Experiment
from .seeds import SeedStudy
from .systems import cross_encoder_schedule, schedule_name

__all__ = ["DEFAULT_SYSTEMS", "Experiment", "ExperimentConfig", "RerankSection", "SeedStudy", "TrainSection", "bar_chart",
           "cross_encoder_schedule", "markdown_table", "schedule_name", "seed_study_table", "write_report"]
