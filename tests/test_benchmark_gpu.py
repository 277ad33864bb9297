"""benchmarks/gpu.py (what scripts/benchmark_gpu.sh runs) on CPU with tiny sizes and tiny models:
every part runs and writes its JSON with the machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_part_on_cpu(tmp_path, mini_kilt, tiny_bert, tiny_llama):
    out, scratch = tmp_path / "results", tmp_path / "tmp"
    scratch.mkdir()
    command = [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device", "cpu", "--out-dir", str(out),
               "--model", str(tiny_bert), "--llm", str(tiny_llama),
               "--knowledge-source", str(mini_kilt / "knowledge_source.jsonl"), "--encode-passages", "8",
               "--encode-batch-size", "4", "--encode-repeats", "1", "--corpus-passages", "8", "--shard-size", "4",
               "--search-n", "300", "--search-dim", "16", "--search-queries", "4", "--search-k", "10",
               "--search-clusters", "4", "--search-repeats", "1",
               "--train-data", str(mini_kilt), "--train-tasks", "nq,fever", "--train-steps", "2", "--train-batch", "2",
               "--rerank-methods", "zero-shot,cross-encoder", "--rerank-queries", "2", "--rerank-passages", "3"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(scratch)}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    docs = {p.name: json.loads(p.read_text()) for p in out.iterdir()}
    assert sorted(docs) == ["encoding-cpu.json", "rerank-cpu.json", "search-cpu.json", "training-cpu.json"]
    assert all(doc["machine"]["cpu_count"] for doc in docs.values())

    encoding = docs["encoding-cpu.json"]
    assert sorted(encoding["results"]) == ["dual_encoder", "sentence_transformers"]
    assert encoding["agreement"]["dual_encoder"]["min_cosine_vs_sentence_transformers"] > 0.9999
    assert encoding["setup"]["batch_size"] == 4 and encoding["ratio_dual_encoder_vs_sentence_transformers"] > 0
    search = docs["search-cpu.json"]["results"]
    assert search["torch"]["searches"][0]["recall@10"] == 1.0 and search["flat"]["config"]["gpu_float16"] is False
    training = docs["training-cpu.json"]["results"]
    assert [(r["method"], r["steps"]) for r in training] == [("naive", 2), ("taco", 2)]
    assert all(r["steps_per_s"] > 0 for r in training)
    assert all(0 < r["host_share"] < 1 and r["host_seconds_per_step"] > 0 for r in training)
    rerank = docs["rerank-cpu.json"]["results"]
    assert [(r["method"], r["passages"]) for r in rerank] == [("zero-shot", 6), ("cross-encoder", 6)]
