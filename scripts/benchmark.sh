#!/usr/bin/env bash
# Speed and memory benchmarks; each writes benchmarks/results/<name>.json with the machine.
#   scripts/benchmark.sh [encoding|search|memory|specialization|rerank|all] [extra args]
. "$(dirname "$0")/_env.sh"
what="${1:-all}"; shift || true
run() { echo "== $1"; python "benchmarks/$1.py" "${@:2}"; }
case "$what" in
    encoding|search|memory|specialization|rerank) run "$what" "$@" ;;
    scale) run scale "$@" ;;  # long: corpus sizes up to 2M passages, see benchmarks/README.md
    all) for b in encoding search memory specialization rerank; do
             [ -f "benchmarks/$b.py" ] && run "$b" "$@"
         done ;;
    *) echo "benchmark.sh: unknown benchmark $what" >&2; exit 2 ;;
esac
