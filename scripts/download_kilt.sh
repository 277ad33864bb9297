#!/usr/bin/env bash
# Download the official KILT knowledge source and task files (train/dev/test) into a folder,
# resuming partial downloads and skipping finished files. Needs internet and curl or wget.
set -euo pipefail

BASE_URL="http://dl.fbaipublicfiles.com/KILT"
ALL_TASKS="fever nq hotpotqa triviaqa eli5 trex structured_zeroshot aidayago2 wned cweb wow"

usage() {
    cat <<EOF
Usage: $(basename "$0") [OPTIONS] [OUT_DIR]

Download KILT (Petroni et al., NAACL 2021) from ${BASE_URL} into OUT_DIR (default: data/kilt):
the knowledge source kilt_knowledgesource.json (35 GiB, 5.9M pages) and, per task, the
train/dev/test files under their official names. Interrupted downloads resume; finished
files are skipped.

Options:
  --tasks LIST              comma-separated tasks (default: all)
                            known: ${ALL_TASKS// /, }
  --no-knowledge-source     only the task files
  --dry-run                 print the URLs and target paths; download nothing
  -h, --help                show this help

TriviaQA files hold question ids only: fill in the questions with KILT's
scripts/get_triviaqa_input.py before using them.
EOF
}

task_files() {  # official file names of one task
    case "$1" in
        triviaqa) echo "triviaqa-train_id-kilt.jsonl triviaqa-dev_id-kilt.jsonl triviaqa-test_id_without_answers-kilt.jsonl" ;;
        wned|cweb) echo "$1-dev-kilt.jsonl $1-test_without_answers-kilt.jsonl" ;;
        *) echo "$1-train-kilt.jsonl $1-dev-kilt.jsonl $1-test_without_answers-kilt.jsonl" ;;
    esac
}

out_dir="data/kilt"
tasks="$ALL_TASKS"
knowledge_source=1
dry_run=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tasks) [[ $# -ge 2 ]] || { echo "--tasks needs a value" >&2; exit 2; }; tasks="${2//,/ }"; shift 2 ;;
        --tasks=*) tasks="${1#--tasks=}"; tasks="${tasks//,/ }"; shift ;;
        --no-knowledge-source) knowledge_source=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
        *) out_dir="$1"; shift ;;
    esac
done

files=()
[[ $knowledge_source == 1 ]] && files+=(kilt_knowledgesource.json)
for task in $tasks; do
    if [[ " $ALL_TASKS " != *" $task "* ]]; then
        echo "unknown task: $task (known: ${ALL_TASKS// /, })" >&2
        exit 2
    fi
    read -r -a names <<< "$(task_files "$task")"
    files+=("${names[@]}")
done

fetch() {  # URL TARGET: download into TARGET.part (resuming it), then move into place
    if command -v curl > /dev/null; then
        curl --fail --location --retry 5 --continue-at - --output "$2.part" "$1"
    else
        wget --continue --tries=5 --output-document="$2.part" "$1"
    fi
    mv "$2.part" "$2"
}

[[ $dry_run == 1 ]] || mkdir -p "$out_dir"
for name in "${files[@]}"; do
    url="$BASE_URL/$name"
    target="$out_dir/$name"
    if [[ $dry_run == 1 ]]; then
        echo "$url -> $target"
    elif [[ -f "$target" ]]; then
        echo "done already: $target"
    else
        echo "downloading $url"
        fetch "$url" "$target"
    fi
done
