#!/usr/bin/env bash
# Encoding, exact search, training and reranking throughput on one GPU, in a few minutes; writes
# benchmarks/results/{encoding,search,training,rerank}-gpu.json. Sizes: python benchmarks/gpu.py --help
#   scripts/benchmark_gpu.sh [--parts encoding,search] [--encode-passages 50000] ...
. "$(dirname "$0")/_env.sh"
exec python benchmarks/gpu.py "$@"
