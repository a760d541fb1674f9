#!/usr/bin/env bash
# Every GPU configuration of bench_train.py in one go, well under 8 minutes on one H100/H200:
#   bash benchmarks/gpu_suite.sh OUTPUT_FOLDER [BUDGET_SECONDS]
# Writes OUTPUT_FOLDER/bench_train_cuda.json (+ .md, the log, nvidia-smi). Needs torch, transformers,
# accelerate and peft; no network, no `datasets`. Wheels in .whl/ (e.g. liger-kernel) are installed first.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_suite.sh OUTPUT_FOLDER [BUDGET_SECONDS]}"
budget="${2:-450}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/nvidia-smi.csv" 2>&1
"$python" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__)" 2>&1 | tee "$out/versions.txt"
# FSDP2 through the recipe's Trainer: sharded checkpoint resume and gathered final weights (one GPU: 1 process;
# with 2+ GPUs pass NUM_FSDP_PROCESSES=2 to also check that each rank stores half the parameters):
accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes "${NUM_FSDP_PROCESSES:-1}" \
    benchmarks/check_fsdp.py --out "$out/fsdp" 2>&1 | tail -20 | tee "$out/check_fsdp.txt"
# Every attention kernel offered on the GPU keeps packed documents apart (about 20 s):
"$python" benchmarks/check_packing_kernels.py 2>&1 | tee "$out/packing_kernels.txt"
"$python" benchmarks/bench_train.py --device cuda --out "$out" --budget "$budget" \
    --setups "${SETUPS:-ours-sdpa-b32,ours-flex-b32,plain-1024,ours-2048,loss-default,loss-chunked,plain-compile-1024,seed-like,ours-b16,chunked-compile-1024,chunked-eager-1024}" \
    2>&1 | tee "$out/bench_train_cuda.log"
