#!/usr/bin/env bash
# The kernels' GPU checks, for a session that is lent a GPU machine (the library's device tool). That machine
# has torch, triton, transformers, einops and pytest but reaches no package index, so this project and the
# few packages it lacks travel as wheels in .whl/ (git-ignored). Each stage fits the tool's 10 minutes.
#
#   bash scripts/gpu_session.sh prepare                  # here: build / download the wheels into .whl/
#   run(command="bash scripts/gpu_session.sh tests", carry=[".whl"])    # CUDA tests of kernels, fla, model
#   run(command="bash scripts/gpu_session.sh bench", carry=[".whl"])    # benchmarks/wkv.py, bf16 and fp32
#   run(command="bash scripts/gpu_session.sh tune", carry=[".whl"])     # chunk x block_v of the kernels, T = 4096
#   run(command="bash scripts/gpu_session.sh half", carry=[".whl"], timeout_s=600)  # bf16/fp16 tests on CUDA, steps
#
# Logs go to $OUT (the tool brings them back). Record the figures in docs/kernels.md.
set -euo pipefail

# not on the GPU image (its package list is in the device tool's KINDS.md): fla-core for the comparison, rwkv for
# the exactness tests, pydantic for the configs that the upscale test's tuning run reads
WHEELS=("fla-core==0.6.0" "rwkv==0.8.32" "pydantic==2.13.4" "pydantic-core==2.46.4" "annotated-types==0.7.0"
        "typing-inspection==0.4.2")
out="${OUT:-/tmp/gpu_session}"

install() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    mkdir -p "$out"
    python3 - <<'EOF' | tee "$out/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")
EOF
}

case "${1:-}" in
prepare)
    rm -rf .whl && mkdir -p .whl
    python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
    # the GPU machine runs CPython 3.12 on x86-64 (pydantic-core is compiled)
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls -l .whl
    ;;
tests)
    install
    # test_fla_backend compares our kernels with fla's chunk_rwkv7 on CUDA; test_model_exactness runs the model
    python3 -m pytest -q -p no:cacheprovider tests/test_triton_wkv.py tests/test_fla_backend.py tests/test_wkv.py \
        tests/test_model_exactness.py tests/test_upscale.py 2>&1 | tee "$out/tests.txt"
    ;;
bench)
    install
    python3 benchmarks/wkv.py --dtype bfloat16 2>&1 | tee "$out/bench_bf16.txt"
    python3 benchmarks/wkv.py --dtype float32 --BH 64 2>&1 | tee "$out/bench_fp32.txt"
    python3 benchmarks/wkv.py --dtype bfloat16 --all-grads --T 4096 --only triton fla 2>&1 | tee "$out/bench_allgrads.txt"
    ;;
half)
    install
    # 1. the bfloat16 / float16 comparisons with float32 on the GPU (Triton kernels): logits and states, greedy
    #    tokens, the tuning gradient, the upscaled state + DBP, the HF wrapper; the command tests (and lm-eval's,
    #    absent from the image) skip. ~2 min here on CPU.
    RL_STATETUNE_TEST_DEVICE=cuda timeout 150 python3 -P -m pytest -q -p no:cacheprovider -rs \
        tests/test_half_precision.py 2>&1 | tee "$out/half_tests.txt" || echo "half-precision tests: exit $?" | tee -a "$out/half_tests.txt"
    # 2. the 0.1B shape on the GPU, float32 and bfloat16: a tune step, the demo's RL step (match, G = 8, upscaled
    #    state + DBP), the rollout RL step (verifier, G = 4 answers of <= 48 tokens) and the held-out generation
    timeout 240 python3 -P benchmarks/step_cost.py --device cuda --shapes 0.1B --rows tune rl rollout eval --B 4 \
        --T 1024 --steps 3 2>&1 | tee "$out/step_cost_cuda_0.1B.txt" || echo "step_cost 0.1B: exit $?" | tee -a "$out/step_cost_cuda_0.1B.txt"
    # 3. while the call's 10 minutes last: the tune and RL steps at 0.4B and 1.5B
    timeout 150 python3 -P benchmarks/step_cost.py --device cuda --shapes 0.4B 1.5B --rows tune rl --B 4 --T 1024 \
        --steps 3 2>&1 | tee "$out/step_cost_cuda_sizes.txt" || echo "step_cost sizes: exit $?" | tee -a "$out/step_cost_cuda_sizes.txt"
    ;;
tune)
    install
    # fla's own figure is in bench_bf16.txt; block_v above 32 at K = 64 exceeds the chunk kernels' tile limit
    for chunk in 16 32 64; do
        for bv in 16 32; do
            python3 benchmarks/wkv.py --dtype bfloat16 --T 4096 --BH 8 64 --only triton \
                --triton-chunk "$chunk" --block-v "$bv" 2>&1 | tee -a "$out/tune.txt" || echo "chunk $chunk bv $bv failed"
        done
    done
    ;;
*)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
