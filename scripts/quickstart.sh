#!/usr/bin/env bash
# The whole pipeline, offline, on the bundled miniature KILT: BM25, zero-shot dense retrieval
# with the packaged all-MiniLM-L6-v2, multitask fine-tuning (naive and TACO), and reranking;
# prints one table. With --data DIR (or ../shared/realkilt beside the checkout) the same
# table follows on that real KILT folder.
#
#   scripts/quickstart.sh [--data DIR] [--llm NAME_OR_PATH] [--systems a,b,...] [--fast] [--fresh]
#
# --llm (or MTR_LLM) picks the LLM of the Q-PEFT stage (default: the packaged SmolLM2-135M,
# a 4-bit GGUF). --fast runs only BM25 and zero-shot. Results go to runs/quickstart/.
. "$(dirname "$0")/_env.sh"

DATA=""; LLM="${MTR_LLM:-}"; SYSTEMS=""; EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --llm) LLM="$2"; shift 2 ;;
        --systems) SYSTEMS="$2"; shift 2 ;;
        --fast) SYSTEMS="bm25,zero-shot"; shift ;;
        --fresh) EXTRA+=(--fresh true); shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "quickstart: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$LLM" ] && EXTRA+=(--llm "$LLM")
[ -n "$SYSTEMS" ] && EXTRA+=(--systems "$SYSTEMS")

echo "== bundled miniature KILT (tests/fixtures/mini_kilt, hand-written) =="
mtr benchmark-quality tests/fixtures/mini_kilt --out runs/quickstart/mini_kilt.json \
    --work-dir runs/quickstart/mini_kilt --config scripts/configs/quickstart-mini.yaml "${EXTRA[@]}"

if [ -z "$DATA" ] && [ -d ../shared/realkilt ]; then DATA=../shared/realkilt; fi
if [ -n "$DATA" ]; then
    echo
    echo "== real KILT data: $DATA =="
    mtr benchmark-quality "$DATA" --out runs/quickstart/real.json --work-dir "runs/quickstart/$(basename "$DATA")" \
        --config scripts/configs/quickstart-real.yaml "${EXTRA[@]}"
else
    echo "(no real KILT folder: pass --data DIR, e.g. one made by scripts/download_kilt.sh and mtr kilt-subset)"
fi
