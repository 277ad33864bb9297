"""Every throughput benchmark in one run, sized for one GPU: encoding (DualEncoder vs
sentence-transformers, same texts and batch), exact search, short naive and taco training
runs (steps/s) and reranking (LLM and cross-encoder passages/s).

The defaults take a few minutes on one H100 / H200. Encoding and search run `encoding.py`
and `search.py` with the sizes given here, reranking runs `rerank.py`'s per-method timing.
Each part writes OUT_DIR/<part>-gpu.json (`-cpu.json` with --device cpu) with the machine,
the command and its figures.

    scripts/benchmark_gpu.sh                       # writes benchmarks/results/*-gpu.json
    python benchmarks/gpu.py --device cpu --encode-passages 8 ...   # tiny sizes on CPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import encoding  # noqa: E402  (benchmarks/ is on sys.path; it also puts the repository there)
import rerank
import search
from _common import machine_info, write_result

REPO = Path(__file__).resolve().parents[1]
PARTS = ("encoding", "search", "training", "rerank")


def training(args: argparse.Namespace, device: str, out: Path) -> dict:
    """Steps/s of short naive and taco runs at the default batch (random negatives: no BM25)."""
    import torch

    from kilt.passages import PassageStore, write_passages
    from multitask_retriever.data import build_training_examples, task_train_files
    from multitask_retriever.models import packaged_minilm_path
    from multitask_retriever.config import replace_places
    from multitask_retriever.trainer import MultitaskTrainer, TrainConfig

    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # accelerate would take a GPU where there is one
    data = args.train_data
    source = next((data / n for n in ("knowledge_source.jsonl", "knowledge_source.jsonl.gz")
                   if (data / n).is_file()), None)
    if source is None:
        raise SystemExit(f"{data}: no knowledge_source.jsonl[.gz] (--train-data)")
    options = {key: value for key, value in (("optim.mixed_precision", args.mixed_precision),
                                             ("data.per_task_batch_size", args.train_batch)) if value is not None}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtr-bench-train-") as tmp:
        passages = Path(tmp) / "passages.jsonl"
        write_passages(source, passages, progress=False)
        store = PassageStore(passages, progress=False)
        files = task_train_files(data, [t for t in args.train_tasks.split(",") if t])
        examples = build_training_examples(files, store, "none", max_queries=args.train_queries, progress=False)
        for method in args.train_methods.split(","):
            config = replace_places(TrainConfig(), {
                "model.name_or_path": str(args.model or packaged_minilm_path()), "data.tasks": list(examples),
                "method": method, "data.n_negatives": args.train_negatives, "optim.steps": args.train_steps,
                "data.negatives": "none", "seed": 0, "progress": False, "output_dir": str(Path(tmp) / method),
                **options})
            trainer = MultitaskTrainer(config, examples=examples, store=store)
            trainer.encoder()  # loaded before the clock starts
            starts = _step_starts(trainer)
            with _host_time() as host:
                result = trainer.train()
            if device == "cuda":
                torch.cuda.synchronize()
            steady = starts[1:] if len(starts) > 2 else starts  # without the first step's warm-up
            per_s = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None
            host_per_step = (sum(d for t, d in host if steady[0] <= t < steady[-1]) / (len(steady) - 1)
                             if len(steady) > 1 else None)  # over the same steps as steps_per_s
            rows.append({"method": method, "steps": result.step, "seconds": round(result.seconds, 3),
                         "steps_per_s": per_s, "host_seconds_per_step": host_per_step,
                         "host_share": host_per_step * per_s if per_s and host_per_step is not None else None,
                         "first_loss": result.losses[0], "last_loss": result.losses[-1]})
            print(json.dumps(rows[-1]), flush=True)
    by_method = {r["method"]: r for r in rows}
    ratio = None
    if {"naive", "taco"} <= set(by_method) and by_method["taco"]["steps_per_s"]:
        ratio = by_method["naive"]["steps_per_s"] / by_method["taco"]["steps_per_s"]
    doc = {"benchmark": "training throughput", "command": _command(), "machine": machine_info(), "device": device,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "setup": {"data": str(data), "tasks": list(examples), "per_task_batch_size": config.data.per_task_batch_size,
                     "n_negatives": args.train_negatives, "negatives": "random (none)", "steps": args.train_steps,
                     "mixed_precision": config.optim.mixed_precision,
                     "note": "steps_per_s: from the start of step 2 to the start of the last step (each step "
                             "waits for its losses), so neither the first step's warm-up nor the final save "
                             "counts; seconds: the whole train() call; host_seconds_per_step: building the "
                             "step's task batches and tokenising them (MultitaskBatches.batch, "
                             "TaskBatch.tokenize), host_share its share of the step time"},
           "results": rows, "taco_time_vs_naive": ratio}
    write_result(out, doc)
    return doc


@contextlib.contextmanager
def _host_time():
    """(start time, seconds) of every task-batch build and tokenisation while the block runs: the
    host-side work of a training step that a GPU would wait for."""
    from multitask_retriever.data import MultitaskBatches, TaskBatch

    calls: list[tuple[float, float]] = []
    saved = MultitaskBatches.batch, TaskBatch.tokenize

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((start, time.perf_counter() - start))
        return wrapper

    MultitaskBatches.batch, TaskBatch.tokenize = timed(saved[0]), timed(saved[1])
    try:
        yield calls
    finally:
        MultitaskBatches.batch, TaskBatch.tokenize = saved


def _step_starts(trainer) -> list[float]:
    """Times at which each training step starts (the trainer's `_step`, wrapped on this instance)."""
    starts: list[float] = []
    step = trainer._step

    def timed(*args, **kwargs):
        starts.append(time.perf_counter())
        return step(*args, **kwargs)

    trainer._step = timed
    return starts


def reranking(args: argparse.Namespace, device: str, out: Path) -> dict:
    """Passages/s of each reranking method on the same queries and candidates (rerank.py's timing)."""
    rows = []
    for method in args.rerank_methods.split(","):
        rows.append(rerank.run_one(method, args.rerank_queries, args.rerank_passages, device, llm=args.llm))
        print(json.dumps(rows[-1]), flush=True)
    doc = {"benchmark": "rerank throughput (untrained modules; not a quality measurement)", "command": _command(),
           "machine": rerank.machine(device), "llm": args.llm or "packaged SmolLM2-135M-Instruct",
           "config": {"queries": args.rerank_queries, "passages_per_query": args.rerank_passages},
           "results": rows}
    write_result(out, doc)
    return doc


def _command() -> str:
    return shlex.join(["python", *sys.argv])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cpu [cuda]")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {','.join(PARTS)} [all]")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--model", default=None, help="encoder for encoding and training [the packaged all-MiniLM-L6-v2]")
    g = ap.add_argument_group("encoding")
    g.add_argument("--knowledge-source", type=Path,
                   default=REPO.parent / "shared" / "realkilt" / "knowledge_source.jsonl",
                   help="real passages to encode [../shared/realkilt/knowledge_source.jsonl]")
    g.add_argument("--encode-passages", type=int, default=20_000, help="passages per timed pass [20000]")
    g.add_argument("--encode-batch-size", type=int, default=256, help="batch size of both sides [256]")
    g.add_argument("--encode-repeats", type=int, default=3, help="timed passes per side [3]")
    g.add_argument("--corpus-passages", type=int, default=20_000, help="passages for encode_corpus [20000]")
    g.add_argument("--shard-size", type=int, default=5_000, help="encode_corpus shard size [5000]")
    g = ap.add_argument_group("exact search")
    g.add_argument("--search-n", type=int, default=1_000_000, help="corpus vectors [1000000]")
    g.add_argument("--search-dim", type=int, default=768, help="dimensions [768]")
    g.add_argument("--search-queries", type=int, default=10_000, help="queries [10000]")
    g.add_argument("--search-k", type=int, default=100, help="results per query [100]")
    g.add_argument("--search-clusters", type=int, default=2000, help="mixture centres of the synthetic data [2000]")
    g.add_argument("--search-repeats", type=int, default=3, help="timed searches per index (median) [3]")
    g = ap.add_argument_group("training")
    g.add_argument("--train-data", type=Path, default=REPO.parent / "shared" / "realkilt",
                   help="KILT folder with train files and a knowledge source [../shared/realkilt]")
    g.add_argument("--train-tasks", default="", help="comma-separated [every task with a train file]")
    g.add_argument("--train-queries", type=int, default=0, help="training queries per task (0 = all) [0]")
    g.add_argument("--train-methods", default="naive,taco", help="gradient combiners timed [naive,taco]")
    g.add_argument("--train-steps", type=int, default=100, help="steps per run [100]")
    g.add_argument("--train-batch", type=int, default=None, help="queries per task per step [TrainConfig's]")
    g.add_argument("--train-negatives", type=int, default=1, help="negatives per query [1]")
    g.add_argument("--mixed-precision", default=None, help="no | fp16 | bf16 [the TrainConfig default]")
    g = ap.add_argument_group("reranking")
    g.add_argument("--rerank-methods", default="zero-shot,qpeft-a,cross-encoder",
                   help="methods timed [zero-shot,qpeft-a,cross-encoder]")
    g.add_argument("--rerank-queries", type=int, default=64, help="queries [64]")
    g.add_argument("--rerank-passages", type=int, default=20, help="candidates per query [20]")
    g.add_argument("--llm", default="", help="LLM of the LLM methods [the packaged SmolLM2-135M-Instruct]")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        ap.error(f"unknown --parts {sorted(set(parts) - set(PARTS))}")
    if args.device not in ("cuda", "cpu"):
        ap.error(f"--device must be cuda or cpu, got {args.device!r}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("torch sees no CUDA device; pass --device cpu (with small sizes) to run on CPU")
    suffix = "gpu" if args.device == "cuda" else "cpu"
    out = {part: args.out_dir / f"{part}-{suffix}.json" for part in parts}
    started = time.perf_counter()
    if "encoding" in parts:
        print("== encoding", flush=True)
        encoding.main(["--knowledge-source", str(args.knowledge_source), "--passages", str(args.encode_passages),
                       "--batch-size", str(args.encode_batch_size), "--repeats", str(args.encode_repeats),
                       "--corpus-passages", str(args.corpus_passages), "--shard-size", str(args.shard_size),
                       "--no-unsorted", "--device", args.device, "--out", str(out["encoding"]),
                       *(["--model", args.model] if args.model else [])])
    if "search" in parts:
        print("== exact search", flush=True)
        search.main(["--n", str(args.search_n), "--dim", str(args.search_dim), "--queries", str(args.search_queries),
                     "--k", str(args.search_k), "--clusters", str(args.search_clusters), "--types", "flat,torch",
                     "--repeats", str(args.search_repeats), "--device", args.device, "--no-numpy",
                     "--out", str(out["search"])])
    if "training" in parts:
        print("== training", flush=True)
        training(args, args.device, out["training"])
    if "rerank" in parts:
        print("== reranking", flush=True)
        reranking(args, args.device, out["rerank"])
    print(f"wrote {', '.join(str(p) for p in out.values())} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
