"""Reranking throughput (passages/s) and peak memory of every LLM reranker against
zero-shot query-likelihood scoring, on the packaged SmolLM2-135M and the same inputs.

Each method runs in its own subprocess (so peak RSS is its own); modules are untrained
(throughput does not depend on the weights). This is NOT a quality benchmark.

    python benchmarks/rerank.py --queries 4 --passages 20 --out benchmarks/results/rerank.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import machine_info, write_result  # noqa: E402  (benchmarks/ is on sys.path)

METHODS = ["zero-shot", "qpeft-a", "qpeft-r", "idspam", "prompt-tuning", "lora", "cross-encoder"]


def _inputs(n_queries: int, n_passages: int) -> list[tuple[str, list[str]]]:
    """Deterministic queries with `n_passages` ~100-word passages each, from the mini KILT
    (its queries repeat, with other passages, beyond the ten it has)."""
    from kilt.io import read_task_file
    from kilt.passages import iter_passage_file, write_passages

    root = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mini_kilt"
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "mtr-bench-passages.jsonl"
    write_passages(root / "knowledge_source.jsonl", tmp, words=100)
    passages = [f"{p.title}\n{p.text}" for p in iter_passage_file(tmp)]
    queries = list(itertools.islice(itertools.cycle(e.input for e in read_task_file(root / "nq-dev-kilt.jsonl")),
                                    n_queries))
    return [(q, [passages[(i * 7 + j) % len(passages)] for j in range(n_passages)]) for i, q in enumerate(queries)]


def run_one(method: str, n_queries: int, n_passages: int, device: str, llm: str = "") -> dict:
    import torch

    from multitask_retriever.rerank import make_reranker

    torch.manual_seed(0)
    started = time.perf_counter()
    reranker = make_reranker(method, "" if method == "cross-encoder" else llm).to(device)
    load_s = time.perf_counter() - started
    inputs = _inputs(n_queries, n_passages)
    reranker.rerank(*inputs[0])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for query, passages in inputs:
        scores = reranker.rerank(query, passages)
        assert len(scores) == len(passages)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row = {"method": method, "trainable_parameters": reranker.num_trainable_parameters(),
           "passages": n_queries * n_passages, "seconds": round(seconds, 3),
           "passages_per_s": round(n_queries * n_passages / seconds, 2), "load_s": round(load_s, 2),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def run_interleaved(methods: list[str], n_queries: int, n_passages: int, rounds: int, device: str) -> list[dict]:
    """All methods on ONE loaded LM, alternating query by query for `rounds` rounds, so that a
    shared machine's changing load hits every method alike; LoRA gets its own copy of the LM."""
    import copy

    import torch

    from multitask_retriever.rerank import reranker_class
    from multitask_retriever.rerank.llm_scoring import load_lm

    torch.manual_seed(0)
    lm, tokenizer = load_lm("")
    rerankers = {}
    for method in methods:
        if method == "cross-encoder":
            from multitask_retriever.rerank import make_reranker

            rerankers[method] = make_reranker(method).to(device)
            continue
        cls = reranker_class(method)
        model = copy.deepcopy(lm) if method == "lora" else lm
        rerankers[method] = cls(model, tokenizer, cls._make_config({})).to(device)
    inputs = _inputs(n_queries, n_passages)
    for r in rerankers.values():
        r.rerank(*inputs[0])  # warm-up
    seconds = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for query, passages in inputs:
            for method, r in rerankers.items():
                started = time.perf_counter()
                assert len(r.rerank(query, passages)) == len(passages)
                seconds[method] += time.perf_counter() - started
    n = rounds * n_queries * n_passages
    return [{"method": m, "trainable_parameters": rerankers[m].num_trainable_parameters(), "passages": n,
             "seconds": round(seconds[m], 3), "passages_per_s": round(n / seconds[m], 2)} for m in methods]


def machine(device: str) -> dict:
    """_common.machine_info, plus the device measured and the load when the run began."""
    info = {**machine_info(), "device": device}
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--passages", type=int, default=20, help="candidates per query (rerank_k)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; the fastest is kept")
    parser.add_argument("--out", default="benchmarks/results/rerank.json")
    parser.add_argument("--interleave", type=int, default=0,
                        help="also time all methods in one process, alternating, for N rounds")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from multitask_retriever.devices import resolve_device

    device = resolve_device(args.device)
    if args.one:
        print(json.dumps(run_one(args.one, args.queries, args.passages, device)))
        return 0
    info = machine(device)
    rows = []
    for method in args.methods.split(","):
        best = None
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, __file__, "--one", method, "--queries", str(args.queries),
                                  "--passages", str(args.passages), "--device", device],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            best = row if best is None or row["seconds"] < best["seconds"] else best
        rows.append(best)
        print(json.dumps(best), flush=True)
    base = next((r for r in rows if r["method"] == "zero-shot"), None)
    if base:
        for r in rows:
            r["time_vs_zero_shot"] = round(r["seconds"] / base["seconds"], 3)
            r["rss_vs_zero_shot"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 3)
    interleaved = []
    if args.interleave:
        interleaved = run_interleaved(args.methods.split(","), args.queries, args.passages, args.interleave, device)
        base_s = next((r["seconds"] for r in interleaved if r["method"] == "zero-shot"), None)
        for r in interleaved:
            if base_s:
                r["time_vs_zero_shot"] = round(r["seconds"] / base_s, 3)
            print(json.dumps(r), flush=True)
    doc = {"benchmark": "rerank throughput (untrained modules; not a quality measurement)",
           "llm": "packaged SmolLM2-135M-Instruct (4-bit GGUF, dequantised to float32)",
           "command": "python benchmarks/rerank.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": info, "config": {"queries": args.queries, "passages_per_query": args.passages,
                                       "repeats": args.repeats, "interleave_rounds": args.interleave},
           "results": rows, "interleaved": interleaved,
           "notes": "results: one subprocess per method (peak RSS is dominated by loading the LM); "
                    "interleaved: all methods in one process, alternating per query, the fair time ratio "
                    "on a shared machine whose load changes"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(Path(args.out), doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
