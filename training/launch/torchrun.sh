#!/usr/bin/env bash
# Multi-GPU / multi-node launch of one training stage with torchrun.
#
#   training/launch/torchrun.sh STAGE --config FILE [--resume auto] [key=value ...]
#
# Single node: GPUS (default: all visible) processes on this machine.
# Multi-node:  run the same command on every node with NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT set
#              (or RDZV_ENDPOINT=host:port for c10d rendezvous); every rank runs efficientsam3-train.
set -euo pipefail

# Count the GPUs with nvidia-smi when GPUS is unset. Without nvidia-smi (a CPU node, a container
# without the driver tools) the plain `$(nvidia-smi -L | wc -l)` failed under `set -euo pipefail`
# and the script exited 127 without a word; now it says so and runs one process.
if [ -z "${GPUS:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    GPUS="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
  else
    echo "torchrun.sh: nvidia-smi not found; running 1 process (set GPUS=N to choose)" >&2
  fi
fi
GPUS="$(echo "${GPUS:-}" | tr -d '[:space:]')"
if [ -z "$GPUS" ] || [ "$GPUS" -lt 1 ]; then
  [ -z "$GPUS" ] || echo "torchrun.sh: nvidia-smi lists no GPU; running 1 process" >&2
  GPUS=1
fi
NNODES="${NNODES:-1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ENDPOINT="${RDZV_ENDPOINT:-${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT}}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"

if [ "$NNODES" -gt 1 ]; then
  exec torchrun --nnodes="$NNODES" --nproc_per_node="$GPUS" \
    --rdzv_id="${RDZV_ID:-efficientsam3}" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" \
    -m efficientsam3_ros.training.cli "$@"
fi
exec torchrun --standalone --nproc_per_node="$GPUS" -m efficientsam3_ros.training.cli "$@"
