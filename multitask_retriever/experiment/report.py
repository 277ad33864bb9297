"""The result document's reports: a markdown table, a PNG chart and the JSON itself."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from kilt.io import atomic_write


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
