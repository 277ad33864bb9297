#!/usr/bin/env bash
# The whole pipeline, offline, on the bundled miniature KILT: BM25, zero-shot dense retrieval
# with the packaged all-MiniLM-L6-v2, TACO fine-tuning, and Q-PEFT-A reranking over an LLM;
# prints one table (about 3 minutes on 2 cores). --all adds naive fine-tuning and a cross-encoder.
#
#   scripts/quickstart.sh [--all] [--real | --data DIR] [--llm NAME_OR_PATH] [--systems a,b,...] [--fast]
#                         [--fresh] [--out DIR]
#
# --real adds the same table on a slice of ../shared/realkilt (real KILT queries and pages: 100
# queries per task and split, their gold pages and 1,000 distractor pages); --data DIR on any KILT
# folder instead (knowledge_source.jsonl[.gz] + <task>-{train,dev}-kilt.jsonl).
# --llm (or MTR_LLM) picks the LLM of the Q-PEFT stage (default: the packaged SmolLM2-135M,
# a 4-bit GGUF). --fast runs only BM25 and zero-shot. Results go to runs/quickstart/ (or --out DIR).
. "$(dirname "$0")/_env.sh"

OUT="runs/quickstart"; DATA=""; REAL=0; LLM="${MTR_LLM:-}"; SYSTEMS=""; EXTRA=(); ALL=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --real) REAL=1; shift ;;
        --llm) LLM="$2"; shift 2 ;;
        --systems) SYSTEMS="$2"; shift 2 ;;
        --fast) SYSTEMS="bm25,zero-shot"; shift ;;
        --all) ALL=(--config scripts/configs/quickstart-all.yaml); shift ;;
        --fresh) EXTRA+=(--fresh true); shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "quickstart: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$LLM" ] && EXTRA+=(--llm "$LLM")
[ -n "$SYSTEMS" ] && EXTRA+=(--systems "$SYSTEMS")

echo "== bundled miniature KILT (tests/fixtures/mini_kilt, hand-written: a smoke run, not a quality claim) =="
mtr benchmark-quality tests/fixtures/mini_kilt --out "$OUT/mini_kilt.json" \
    --work-dir "$OUT/mini_kilt" --config scripts/configs/cpu.yaml \
    --config scripts/configs/quickstart-mini.yaml "${ALL[@]}" "${EXTRA[@]}"

if [ "$REAL" = 1 ] && [ -z "$DATA" ]; then
    [ -d ../shared/realkilt ] || { echo "quickstart: --real needs ../shared/realkilt" >&2; exit 2; }
    DATA="$OUT/realkilt-slice"
    [ -f "$DATA/knowledge_source.jsonl" ] || mtr kilt-subset ../shared/realkilt \
        ../shared/realkilt/knowledge_source.jsonl "$DATA" --queries 100 --distractors 1000 --seed 0 > /dev/null
fi
if [ -n "$DATA" ]; then
    echo
    echo "== real KILT data: $DATA =="
    mtr benchmark-quality "$DATA" --out "$OUT/real.json" --work-dir "$OUT/work-$(basename "$DATA")" \
        --config scripts/configs/cpu.yaml --config scripts/configs/quickstart-real.yaml "${EXTRA[@]}"
else
    echo
    echo "(real data: add --real for a slice of ../shared/realkilt, or --data DIR for any KILT folder;"
    echo " the committed quality figures come from scripts/benchmark_quality.sh)"
fi
