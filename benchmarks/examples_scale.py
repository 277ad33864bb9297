"""Memory of training examples per training process as the query count grows: the JSONL file
read as Python objects (`read_training_examples`) against its memory-mapped columns
(`map_training_examples`), fitted and read off at full KILT's ~2.9M training queries.

Synthetic examples take real training queries of --data (cycled, with a counter so each id is
new), 2 positives, 30 hard negatives and 2 gold pages, as mining writes them. Each way is
measured in a fresh subprocess: private memory (RssAnon, what each of N processes pays) and
shared file pages (RssFile, one copy in the page cache for all processes) after loading and
after reading every example once, the load time and the time to read 10k random examples. The
mapped way runs twice: first converting the file ("convert"), then mapping what is written.

    python benchmarks/examples_scale.py --sizes 100000,300000,1000000
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)
from bm25_scale import _status_mib  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

FULL_KILT_QUERIES = 2_900_000  # TACO's 8 KILT training sets together
PROCESSES = 8


def _memory(row: dict, when: str, base: dict) -> None:
    for field in ("RssAnon", "RssFile"):
        row[f"{when}_{field}_mib"] = _status_mib(field) - base[field]


def child(how: str, path: str, out: str) -> None:
    from multitask_retriever.examples import map_training_examples, read_training_examples

    base = {f: _status_mib(f) for f in ("RssAnon", "RssFile")}
    row: dict = {}
    start = time.perf_counter()
    if how == "objects":
        examples = read_training_examples(path)
    else:
        examples = map_training_examples(path, Path(path).with_suffix(".arrays"))
    row["load_s"] = time.perf_counter() - start
    _memory(row, "loaded", base)
    per_task = [(t, len(e)) for t, e in examples.items()]
    rng = random.Random(0)
    picks = [(t, rng.randrange(n)) for t, n in rng.choices(per_task, k=10_000)]
    start = time.perf_counter()
    for task, i in picks:
        examples[task][i]
    row["random_10k_s"] = time.perf_counter() - start
    for task_examples in examples.values():
        for example in task_examples:
            pass
    _memory(row, "read_all", base)
    Path(out).write_text(json.dumps(row))


def write_examples(path: Path, n: int, queries: list[str]) -> None:
    from multitask_retriever.examples import TrainingExample, write_training_examples

    rng = np.random.default_rng(0)
    tasks = ("fever", "nq", "trex", "wow")
    examples: dict[str, list] = {t: [] for t in tasks}
    ids = rng.integers(0, 25_000_000, size=(n, 32))
    for i in range(n):
        task = tasks[i % len(tasks)]
        examples[task].append(TrainingExample(task, f"q{i}", queries[i % len(queries)], tuple(ids[i, :2].tolist()),
                                              tuple(ids[i, 2:].tolist()), (str(ids[i, 0] // 4), str(ids[i, 1] // 4))))
    write_training_examples(path, examples)


def fit(xs: list[int], ys: list[float], at: float) -> dict:
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return {"a": float(a), "b": float(b), "at_full_kilt": float(a + b * at)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,300000,1000000", help="query counts, comma-separated")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "realkilt"),
                   help="a folder of KILT *-train-kilt.jsonl files whose queries are reused")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "examples-scale.json"))
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    from kilt.io import read_task_file

    queries = [e.input for f in sorted(Path(args.data).glob("*-train-kilt.jsonl")) for e in read_task_file(f)]
    if not queries:
        raise SystemExit(f"{args.data}: no *-train-kilt.jsonl files")
    sizes = [int(s) for s in args.sizes.split(",")]
    doc = {"benchmark": "examples-scale", "command": "python benchmarks/examples_scale.py --sizes " + args.sizes,
           "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "queries_reused": len(queries),
           "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"examples-{n}.jsonl"
            write_examples(path, n, queries)
            row = {"file_bytes": path.stat().st_size}
            for how, name in (("objects", "objects"), ("mapped", "convert"), ("mapped", "mapped")):
                out = Path(tmp) / f"{name}.json"
                subprocess.run([sys.executable, __file__, "--child", how, str(path), str(out)], check=True)
                row[name] = json.loads(out.read_text())
            row["arrays_bytes"] = sum(f.stat().st_size for f in path.with_suffix(".arrays").iterdir())
            doc["sizes"][str(n)] = row
            print(n, json.dumps(row), flush=True)
            path.unlink()
    fits = {}
    for how in ("objects", "mapped"):
        for key in ("read_all_RssAnon_mib", "read_all_RssFile_mib", "load_s"):
            fits[f"{how}_{key}"] = fit(sizes, [doc["sizes"][str(n)][how][key] for n in sizes], FULL_KILT_QUERIES)
    doc["fits"] = fits
    doc["full_kilt"] = {
        "queries": FULL_KILT_QUERIES, "processes": PROCESSES,
        "objects_private_gib_all_processes": PROCESSES * fits["objects_read_all_RssAnon_mib"]["at_full_kilt"] / 1024,
        "mapped_private_gib_all_processes": PROCESSES * fits["mapped_read_all_RssAnon_mib"]["at_full_kilt"] / 1024,
        "mapped_shared_gib": fits["mapped_read_all_RssFile_mib"]["at_full_kilt"] / 1024}
    write_result(Path(args.out), doc)
    print(json.dumps(doc["full_kilt"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
