#!/usr/bin/env bash
# Multitask dual-encoder training with `accelerate launch` (all visible GPUs, or the settings of
# `accelerate config`). Default recipe: TACO on real KILT (scripts/configs/train-kilt-taco.yaml:
# 8 tasks, t5-base, first-decoder-token pooling, lr 5e-6, 64 queries per task and GPU, 1 positive +
# 2 top-ranked hard negatives, passages of 160 tokens, per-task query lengths, task batches by
# n_t^(1/4), 10 % naive + learning-rate warm-up, beta 0.999, tau 2).
# It needs internet for t5-base and a GPU. An interrupted run continues where it stopped.
#
#   scripts/train.sh [--config FILE] [any `mtr train` flag, e.g. --method naive --output-dir DIR]
#
# The config runs 3 ANCE-style rounds after the BM25 one (data.negative_rounds: each mines hard
# negatives with the model just trained, then trains on from it); --data-negative-rounds 0 trains once.
# Without the config's passage file, it is chunked first from DATA_DIR/kilt_knowledgesource.json.
# ACCELERATE_ARGS passes options to `accelerate launch`, e.g. "--multi_gpu --num_processes 8", or
# for two machines sharing one file system, on each: "--multi_gpu --num_machines 2 --num_processes 16
# --machine_rank R --main_process_ip HOST0 --main_process_port 29500".
. "$(dirname "$0")/_env.sh"

CONFIG="scripts/configs/train-kilt-taco.yaml"
if [ "${1:-}" = "--config" ]; then CONFIG="$2"; shift 2; fi
case "${1:-}" in -h|--help) sed -n '2,16p' "$0"; exit 0 ;; esac
config_paths() {  # data.dir and data.passages of the config, however it spells them
    python -c 'import sys
from multitask_retriever.config import config_from_args, load_config_file
from multitask_retriever.trainer import TrainConfig
data = config_from_args(TrainConfig, None, load_config_file(sys.argv[1])).data
print(data.dir); print(data.passages)' "$CONFIG"
}
{ read -r DATA_DIR; read -r PASSAGES; } < <(config_paths)
if [ -n "$PASSAGES" ] && [ ! -f "$PASSAGES" ] && [ -f "$DATA_DIR/kilt_knowledgesource.json" ]; then
    mtr chunk "$DATA_DIR/kilt_knowledgesource.json" "$PASSAGES"
fi
export HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0   # t5-base comes from the hub on first use
read -ra LAUNCH_OPTS <<< "${ACCELERATE_ARGS:-}"
exec accelerate launch "${LAUNCH_OPTS[@]}" -m multitask_retriever.cli train --config "$CONFIG" --resume "$@"
