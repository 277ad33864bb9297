#!/usr/bin/env bash
# The whole pipeline, offline, on real KILT data: see usage below (`scripts/quickstart.sh --help`).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/quickstart.sh [--data DIR | --real DIR] [--fast | --all | --systems a,b,...]
                             [--llm NAME_OR_PATH] [--out DIR] [--fresh]

Builds and scores, offline and on CPU, on data/kilt-mini (real KILT queries and Wikipedia pages
for fever, hotpotqa, nq and wow; 2,141 pages): BM25, the packaged all-MiniLM-L6-v2 zero-shot,
MiniLM fine-tuned with TACO, and a cross-encoder reranking TACO's top 5, fused with TACO's score.
Every row is scored on the same dev queries; the table shows per-task and average R-precision and
the paired difference against the retriever. About 3 minutes on 2 CPU cores (4 where the CPU has
no native bfloat16) and 70 MB of disk; it ends by printing
where the models are and the `mtr pipeline` and `mtr evaluate` commands that reuse them.

  --data DIR      any KILT folder: knowledge_source.jsonl[.gz] or kilt_knowledgesource.json, and
                  <task>-train-kilt.jsonl / <task>-dev-kilt.jsonl files (e.g. tests/fixtures/mini_kilt)
  --real DIR      a full KILT download (scripts/download_kilt.sh DIR): a subset of it is carved
                  first (100 queries per task and split, their gold pages, 1,000 distractor pages)
  --fast          BM25 and zero-shot only (its own report: <name>-fast.json)
  --all           also naive fine-tuning and a Q-PEFT-A LLM reranker (<name>-all.json)
  --systems LIST  any `mtr benchmark-quality` systems (<name>-custom.json)
  --llm NAME      LLM of LLM rerankers (default: the packaged 4-bit SmolLM2-135M; also MTR_LLM)
  --out DIR       where reports and the stage cache go (default: runs/quickstart)
  --fresh         rebuild every stage instead of reusing finished ones
  -h, --help      this help
EOF
}

die() { echo "quickstart: $*" >&2; exit 2; }
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

knowledge_source_in() {  # the knowledge source file of a KILT folder, by the names `mtr` accepts
    local name
    for name in knowledge_source.jsonl knowledge_source.jsonl.gz kilt_knowledgesource.json; do
        [ -f "$1/$name" ] && { echo "$1/$name"; return 0; }
    done
    return 1
}

check_kilt_dir() {  # $1: flag name, $2: folder, $3: the task-file split it needs
    [ -d "$2" ] || die "$1 $2: no such folder"
    knowledge_source_in "$2" > /dev/null \
        || die "$1 $2: no knowledge_source.jsonl[.gz] or kilt_knowledgesource.json in it"
    compgen -G "$2/*-$3-kilt.jsonl" > /dev/null || die "$1 $2: no <task>-$3-kilt.jsonl files in it"
}

OUT="runs/quickstart"; DATA=""; REAL=""; LLM="${MTR_LLM:-}"; SYSTEMS=""; SUFFIX=""; EXTRA=()
CONFIGS=(--config scripts/configs/cpu.yaml --config scripts/configs/quickstart.yaml)
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --data|--real|--llm|--systems|--out) [ $# -ge 2 ] || die "$1 needs a value (see --help)" ;;&
        --data) DATA="$(absolute "$2")"; shift 2 ;;
        --real) REAL="$(absolute "$2")"; shift 2 ;;
        --llm) LLM="$2"; shift 2 ;;
        --systems) SYSTEMS="$2"; SUFFIX="-custom"; shift 2 ;;
        --fast) SYSTEMS="bm25,zero-shot"; SUFFIX="-fast"; shift ;;
        --all) CONFIGS+=(--config scripts/configs/quickstart-all.yaml); SUFFIX="-all"; shift ;;
        --fresh) EXTRA+=(--fresh true); shift ;;
        --out) OUT="$(absolute "$2")"; shift 2 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -n "$DATA" ] && [ -n "$REAL" ] && die "--data and --real exclude each other"
[ -n "$DATA" ] && check_kilt_dir --data "$DATA" dev
[ -n "$REAL" ] && check_kilt_dir --real "$REAL" train && check_kilt_dir --real "$REAL" dev
[ -n "$LLM" ] && EXTRA+=(--llm "$LLM")
[ -n "$SYSTEMS" ] && EXTRA+=(--systems "$SYSTEMS")

. scripts/_env.sh

if [ -n "$REAL" ]; then
    DATA="$OUT/kilt-subset-$(basename "$REAL")"
    if [ ! -d "$DATA" ]; then
        echo "== carving a subset of $REAL into $DATA (reads the whole knowledge source once) =="
        mtr kilt-subset "$REAL" "$(knowledge_source_in "$REAL")" "$DATA" --queries 100 --distractors 1000 --seed 0
    fi
fi
DATA="${DATA:-data/kilt-mini}"
NAME="$(basename "$DATA")"
REPORT="$OUT/$NAME$SUFFIX.json"
WORK="$OUT/work-$NAME"

echo "== $NAME: $DATA =="
mtr benchmark-quality "$DATA" --out "$REPORT" --work-dir "$WORK" "${CONFIGS[@]}" "${EXTRA[@]}"
