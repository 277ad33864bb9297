#!/usr/bin/env bash
# Train a reranker on retrieved candidates and run retrieve-then-rerank on a KILT dev file.
#   scripts/rerank.sh [METHOD] [DATA_DIR] [OUT_DIR]
# METHOD: qpeft-a (default) | qpeft-r | idspam | prompt-tuning | lora | cross-encoder
# The LLM is $MTR_LLM (a Hugging Face name or folder) or, when unset, the packaged SmolLM2-135M;
# the cross-encoder starts from $MODEL_PATH or the packaged all-MiniLM-L6-v2. LR sets the learning
# rate (default: 1e-3 for an LLM method's small module, RerankTrainConfig's for the cross-encoder).
# Candidates come from BM25 unless ENCODER and INDEX name a trained dual encoder and its index.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
METHOD="${1:-qpeft-a}"
DATA="${2:-tests/fixtures/mini_kilt}"
OUT="${3:-runs/rerank-$METHOD}"
STEPS="${STEPS:-200}"
TASK="${TASK:-nq}"
mkdir -p "$OUT"
[ -f "$OUT/passages.jsonl" ] || mtr chunk "$DATA/knowledge_source.jsonl" "$OUT/passages.jsonl"
FIRST=(--passages "$OUT/passages.jsonl")
if [ -n "${ENCODER:-}" ]; then FIRST+=(--encoder "$ENCODER" --index "$INDEX"); fi
MODEL=(--model "${MTR_LLM:-}" --optim-lr "${LR:-1e-3}")
if [ "$METHOD" = cross-encoder ]; then MODEL=(--model "${MODEL_PATH:-}" ${LR:+--optim-lr "$LR"}); fi
mtr train-reranker --method "$METHOD" --data-dir "$DATA" --output-dir "$OUT/train" "${FIRST[@]}" "${MODEL[@]}" \
    --optim-steps "$STEPS" --resume
mtr pipeline "${FIRST[@]}" --reranker "$OUT/train/final/reranker" \
    --queries "$DATA/$TASK-dev-kilt.jsonl" --out "$OUT/$TASK-dev-predictions.jsonl" --k 100 --rerank-k 20
mtr evaluate "$DATA/$TASK-dev-kilt.jsonl" "$OUT/$TASK-dev-predictions.jsonl"
