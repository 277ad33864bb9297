#!/usr/bin/env bash
# Quality of every system on a real KILT folder (default ../shared/realkilt), as committed in
# benchmarks/results/quality-realkilt.json. Extra arguments go to `mtr benchmark-quality`.
. "$(dirname "$0")/_env.sh"
DATA="${1:-../shared/realkilt}"; shift || true
exec mtr benchmark-quality "$DATA" --out benchmarks/results/quality-realkilt.json \
    --config scripts/configs/quality-realkilt.yaml "$@"
