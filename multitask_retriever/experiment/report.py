"""The result document's reports: a markdown table, a PNG chart and the JSON itself."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from safeio.atomic import atomic_write


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    import torch

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


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


def seed_study_table(doc: dict[str, Any]) -> str:
    """A seed study's per-task R-precision (mean ± seed-to-seed std), its tests against naive
    pooled over seeds, and TACO's per-layer specialisation."""
    tasks = doc["data"]["tasks"]
    lines = [f"Seeds {', '.join(map(str, doc['seeds']))}; R-precision mean ± std over seeds.", "",
             "| system | " + " | ".join(tasks) + " | avg |", "|---" * (len(tasks) + 2) + "|"]
    for name, r in doc["systems"].items():
        cells = [f"{r['per_task'][t]['Rprec']:.3f} ± {r['per_task'][t]['Rprec_std']:.3f}" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['avg']['Rprec']:.3f} ± {r['avg']['Rprec_std']:.3f} |")
    lines.append("| n (per seed) | " + " | ".join(str(next(iter(doc["systems"].values()))["per_task"][t]["n"])
                                             for t in tasks) + " | |")
    if doc["significance"]:
        lines += ["", "Paired tests over (seed, query) pairs: difference in R-precision, p (randomisation).", "",
                  "| system vs naive | " + " | ".join(tasks) + " | all |", "|---" * (len(tasks) + 2) + "|"]
        by = {}
        for row in doc["significance"]:
            by.setdefault(row["a"], {})[row["task"]] = row
        for name, rows in by.items():
            cells = [f"{rows[t]['diff']:+.3f} (p {rows[t]['p_randomization']:.2g})" for t in [*tasks, "all"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    spec = doc.get("specialization")
    if spec:
        lines += ["", f"TACO's task weights at the end of training, mean over seeds {spec['seeds']} "
                      f"(entropy in nats; uniform = {spec['max_entropy']:.3f}):", "",
                  "| layer | entropy | Gini | share of entries with a task weight > 0.5 | mean weight per task |",
                  "|---|---|---|---|---|"]
        for name, v in spec["layers"].items():
            weights = ", ".join(f"{t} {w:.3f}" for t, w in sorted(v["task_weights"].items(), key=lambda x: -x[1]))
            lines.append(f"| {name} | {v['entropy']:.4f} | {v['gini']:.4f} | {v['top_share']:.4f} | {weights} |")
    return "\n".join(lines)


def specialization_chart(doc: dict[str, Any], path: str | Path) -> None:
    """PNG of TACO's per-layer weight entropy (and its uniform maximum), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = doc["specialization"]
    names = list(spec["layers"])
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(max(6, 0.35 * len(names) + 2), 8), sharex=True)
    top.plot(range(len(names)), [spec["layers"][n]["entropy"] for n in names], marker="o", label="TACO")
    top.axhline(spec["max_entropy"], color="grey", linestyle="--", label="uniform")
    top.set_ylabel("task-weight entropy (nats)")
    top.legend(fontsize=8)
    middle.bar(range(len(names)), [spec["layers"][n]["gini"] for n in names])
    middle.set_ylabel("Gini of task weights")
    base = [0.0] * len(names)
    for task in spec["tasks"]:
        shares = [spec["layers"][n]["task_weights"][task] for n in names]
        bottom.bar(range(len(names)), shares, bottom=base, label=task)
        base = [b + x for b, x in zip(base, shares)]
    bottom.set_ylabel("mean task weight")
    bottom.legend(fontsize=6, ncol=len(spec["tasks"]), loc="upper center")
    bottom.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    fig.suptitle("TACO specialisation per layer at the end of training")
    fig.tight_layout()
    with atomic_write(Path(path), mode="wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def best_system(doc: dict[str, Any]) -> str:
    """The system with the highest average R-precision (the first of equals)."""
    systems = doc["systems"]
    return max(systems, key=lambda name: systems[name]["avg"].get("Rprec", 0.0))


def reuse_commands(doc: dict[str, Any], out_dir: str | Path, system: str = "") -> list[str]:
    """Where a system's models are (default: the best) and the `mtr pipeline` and `mtr evaluate`
    commands that rank the first task's dev queries with them, into `out_dir`."""
    system = system or best_system(doc)
    entry, config = doc["systems"][system], doc["config"]
    models, task = entry.get("models", {}), doc["data"]["tasks"][0]
    gold = doc["data"]["dev_files"][task]
    guess = Path(out_dir) / f"{task}-dev-predictions.jsonl"
    fusion = (entry.get("fusion") or {}).get("method", "none")
    command = ["mtr pipeline", f"--passages {models['passages']}"]
    if "encoder" in models:
        command += [f"--encoder {models['encoder']}", f"--index {models['index']}"]
        if models["query_prompts"]:
            command.append(f"--query-prompts {models['query_prompts']}")
    if "reranker" in models:
        command += [f"--reranker {models['reranker']}", f"--rerank-k {config['rerank_k']}",
                    f"--fusion {'fitted' if fusion == 'interpolate' else fusion}"]
    else:
        command.append("--rerank-k 0")
    command += [f"--queries {gold}", f"--out {guess}", f"--k {config['k']}"]
    lines = [f"{system}: " + ", ".join(f"{kind} {path}" for kind, path in models.items() if kind != "query_prompts")]
    return lines + [" ".join(command), f"mtr evaluate {gold} {guess}"]


def report_files(out: str | Path) -> list[Path]:
    """Every file `write_report` may write for result FILE.json: the JSON, FILE.md, FILE.png and
    (a seed study's) FILE-specialization.png."""
    out = Path(out)
    return [out, out.with_suffix(".md"), out.with_suffix(".png"), out.with_name(out.stem + "-specialization.png")]


def write_report(doc: dict[str, Any], out: str | Path) -> tuple[Path, ...]:
    """FILE.json, FILE.md and FILE.png side by side (a seed study adds FILE-specialization.png)."""
    out, md, png, spec_png = report_files(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        json.dump(doc, f, indent=1)
    study = "seeds" in doc
    with atomic_write(md) as f:
        f.write((seed_study_table(doc) if study else markdown_table(doc)) + "\n")
    bar_chart(doc, png)
    if not (study and doc.get("specialization")):
        return out, md, png
    specialization_chart(doc, spec_png)
    return out, md, png, spec_png
