"""The same experiment over several seeds (continuing from one shared naive base under
``base_steps``): per-task means with their seed-to-seed spread,
paired tests against ``naive`` over the pooled (seed, query) pairs, TACO's per-layer
specialisation at the end of training, and each fine-tuned system's training curves (loss, the
norm of the written update and of the optimiser's step, TACO's weight entropy) averaged over seeds. ``single`` stands for the single-<task> models, each
scored on its own task."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, replace
from typing import Any, Sequence

from kilt.stats import compare

from ..trainer import specialization_summary
from ..training_loop import FINAL_NAME, LOG_NAME, read_log
from .stages.keys import BASE_RUN
from .config import ExperimentConfig
from .evaluation import SystemResult
from .report import machine_info
from .runner import Experiment

BASELINE = "naive"
#: per-step training-log values the study averages over seeds (learning curves and update sizes)
CURVES = ("loss", "update_norm", "step_norm", "grad_norm", "lr", "weight_entropy")


def _combined(results: dict[str, SystemResult], tasks: Sequence[str]) -> dict[str, SystemResult]:
    """Every system but single-<task>, plus ``single`` when each task has its single model."""
    out = {n: r for n, r in results.items() if not n.startswith("single-")}
    if all(f"single-{t}" in results for t in tasks):
        out["single"] = SystemResult({t: results[f"single-{t}"].per_task[t] for t in tasks},
                                     {t: results[f"single-{t}"].per_query[t] for t in tasks}, 0.0)
    return out


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _training_logs(experiment: Experiment, systems: Sequence[str]) -> dict[str, list[dict]]:
    """Each fine-tuned system's training log (one row per step), where it trained in one run."""
    logs = {}
    for name in systems:
        rows = read_log(experiment.build.training_run(name) / LOG_NAME)
        if rows:
            logs[name] = rows
    return logs


def _curves(logs: dict[int, dict[str, list[dict]]]) -> dict[str, dict[str, list[float]]]:
    """Per system and logged value (`CURVES`, task losses too), the seed mean at every step."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in sorted({n for per_seed in logs.values() for n in per_seed}):
        runs = [per_seed[name] for per_seed in logs.values() if name in per_seed]
        steps = min(len(rows) for rows in runs)
        keys = [k for k in runs[0][0] if k in CURVES or k.startswith("loss/")]
        out[name] = {k: [statistics.fmean(rows[i][k] for rows in runs) for i in range(steps)]
                     for k in keys if all(k in rows[i] for rows in runs for i in range(steps))}
    return out


def _specialization(experiment: Experiment) -> dict[str, Any] | None:
    """TACO's per-layer task-weight statistics at the end of its training, if it was trained."""
    final = experiment.build.training_run("taco") / FINAL_NAME
    return specialization_summary(final) if final.is_dir() else None


class SeedStudy:
    """Runs `config` once per seed, each in WORK_DIR/seed-<s>; `run()` returns the study document."""

    def __init__(self, config: ExperimentConfig, seeds: Sequence[int], progress: bool = True):
        if len(set(seeds)) < 2:
            raise ValueError(f"a seed study needs at least two different seeds, got {list(seeds)}")
        self.config = config
        self.seeds = list(seeds)
        self.progress = progress
        self.work = config.work_path

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        results: dict[int, dict[str, SystemResult]] = {}
        layers: dict[int, dict[str, Any]] = {}
        logs: dict[int, dict[str, list[dict]]] = {}
        tasks: list[str] = []
        data: dict[str, Any] = {}
        for seed in self.seeds:
            work = self.work / f"seed-{seed}"
            shared_base = {"base_dir": str(self.work / BASE_RUN), "base_seed": self.seeds[0]} \
                if self.config.base_steps else {}
            experiment = Experiment(replace(self.config, seed=seed, seeds=[], work_dir=str(work), **shared_base),
                                    self.progress)
            doc = experiment.run()
            tasks, data = doc["data"]["tasks"], doc["data"]
            results[seed] = _combined(experiment.results, tasks)
            logs[seed] = _training_logs(experiment, [*experiment.results, BASE_RUN])
            if (stats := _specialization(experiment)) is not None:
                layers[seed] = stats
        systems = list(results[self.seeds[0]])
        return {"machine": machine_info(), "data": data, "config": asdict(self.config), "seeds": self.seeds,
                "systems": {name: self._system(name, results, tasks) for name in systems},
                "significance": self._tests(systems, results, tasks),
                "specialization": self._layers(layers),
                "training": _curves(logs),
                "seconds": round(time.perf_counter() - start, 1)}

    def _system(self, name: str, results: dict[int, dict[str, SystemResult]], tasks: list[str]) -> dict[str, Any]:
        per_task = {}
        for t in tasks:
            values = [results[s][name].per_task[t]["Rprec"] for s in self.seeds]
            per_task[t] = {"Rprec": statistics.fmean(values), "Rprec_std": _spread(values), "Rprec_seeds": values,
                           "n": int(results[self.seeds[0]][name].per_task[t]["n"])}
        macro = [statistics.fmean(results[s][name].per_task[t]["Rprec"] for t in tasks) for s in self.seeds]
        return {"per_task": per_task, "avg": {"Rprec": statistics.fmean(macro), "Rprec_std": _spread(macro)}}

    def _tests(self, systems: list[str], results: dict[int, dict[str, SystemResult]],
               tasks: list[str]) -> list[dict[str, Any]]:
        """Each system against naive per task and over all tasks, on (seed, query) pairs."""
        rows = []
        for name in systems:
            if name == BASELINE or BASELINE not in systems or name == "bm25":
                continue
            pooled_a: list[float] = []
            pooled_b: list[float] = []
            for t in tasks:
                a, b = [], []
                for s in self.seeds:
                    ours, base = results[s][name].per_query[t], results[s][BASELINE].per_query[t]
                    ids = [q for q in ours if q in base]
                    a += [ours[q]["Rprec"] for q in ids]
                    b += [base[q]["Rprec"] for q in ids]
                pooled_a += a
                pooled_b += b
                rows.append({"a": name, "b": BASELINE, "task": t, **asdict(compare(a, b, seed=self.config.seed))})
            rows.append({"a": name, "b": BASELINE, "task": "all",
                         **asdict(compare(pooled_a, pooled_b, seed=self.config.seed))})
        return rows

    def _layers(self, summaries: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
        """TACO's per-layer weight entropy, Gini, top-task share and mean task weights, averaged over seeds."""
        if not summaries:
            return None
        first = next(iter(summaries.values()))
        layers = {}
        for name, stats in first["layers"].items():
            per_seed = [summaries[s]["layers"][name] for s in summaries]
            layers[name] = {k: statistics.fmean(x[k] for x in per_seed) for k in ("entropy", "gini", "top_share")}
            layers[name]["entries"] = stats["entries"]
            layers[name]["task_weights"] = dict(zip(first["tasks"], (statistics.fmean(x["task_weights"][i]
                                                                                      for x in per_seed)
                                                                    for i in range(len(first["tasks"])))))
        return {"seeds": sorted(summaries), "tasks": first["tasks"], "max_entropy": math.log(len(first["tasks"])),
                "layers": layers}
