#!/usr/bin/env bash
# Quality of every system on real KILT data, as committed in benchmarks/results/:
#   scripts/benchmark_quality.sh [DATA_DIR] [extra mtr benchmark-quality args]
#       -> quality-realkilt.json (default DATA_DIR ../shared/realkilt, 30k pages)
#   scripts/benchmark_quality.sh --slice [extra args]
#       -> quality-realkilt-slice.json: all queries, their gold pages + 4,000 distractors
#   scripts/benchmark_quality.sh --rerankers [extra args]
#       -> rerankers-realkilt-slice.json: every reranker and cross-encoder schedule on the slice
#   scripts/benchmark_quality.sh --taco-study [extra args]
#       -> taco-study-realkilt2.json: naive, taco, pcgrad, cgd and single-task models, 3 seeds each,
#          on a slice of ../shared/realkilt2 (every dev query, <= 500 training queries per task)
#   scripts/benchmark_quality.sh --taco-protocol [extra args]
#       -> taco-protocol-realkilt2.json: the same slice by the two-phase protocol: one naive base,
#          then naive, taco.mean, taco.official and pcgrad continuations, 3 seeds
#   scripts/benchmark_quality.sh --rerank [extra args]
#       -> rerank-realkilt.json: taco, its cross-encoder raw, fused (weights fitted on held-out
#          training queries), every dev query of the 30k-page set
. "$(dirname "$0")/_env.sh"
case "${1:-}" in
    --rerank)
        shift
        exec mtr benchmark-quality ../shared/realkilt --out benchmarks/results/rerank-realkilt.json \
            --config scripts/configs/cpu.yaml --config scripts/configs/rerank-realkilt.yaml "$@"
        ;;
    --taco-study|--taco-protocol)
        mode="${1#--}"; shift
        SLICE=runs/realkilt2-study
        [ -f "$SLICE/knowledge_source.jsonl" ] || mtr kilt-subset ../shared/realkilt2 \
            ../shared/realkilt2/knowledge_source.jsonl.gz "$SLICE" --queries 500 --distractors 1000 --seed 0
        exec mtr benchmark-quality "$SLICE" --out "benchmarks/results/$mode-realkilt2.json" \
            --config scripts/configs/cpu.yaml --config "scripts/configs/$mode-realkilt2.yaml" "$@"
        ;;
    --slice|--rerankers)
        mode="$1"; shift
        SLICE=runs/realkilt-slice
        [ -f "$SLICE/knowledge_source.jsonl" ] || mtr kilt-subset ../shared/realkilt \
            ../shared/realkilt/knowledge_source.jsonl "$SLICE" --queries 100000 --distractors 4000 --seed 0
        if [ "$mode" = --slice ]; then
            exec mtr benchmark-quality "$SLICE" --out benchmarks/results/quality-realkilt-slice.json \
                --config scripts/configs/cpu.yaml --config scripts/configs/quality-realkilt-slice.yaml "$@"
        fi
        exec mtr benchmark-quality "$SLICE" --out benchmarks/results/rerankers-realkilt-slice.json \
            --config scripts/configs/cpu.yaml --config scripts/configs/rerankers-realkilt-slice.yaml "$@"
        ;;
esac
DATA="${1:-../shared/realkilt}"; shift || true
exec mtr benchmark-quality "$DATA" --out benchmarks/results/quality-realkilt.json \
    --config scripts/configs/cpu.yaml --config scripts/configs/quality-realkilt.yaml "$@"
