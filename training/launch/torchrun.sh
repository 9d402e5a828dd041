#!/usr/bin/env bash
# Multi-GPU / multi-node launch of one training stage with torchrun.
#
#   training/launch/torchrun.sh STAGE --config FILE [--resume auto] [key=value ...]
#
# Single node: GPUS (default: all visible) processes on this machine.
# Multi-node:  run the same command on every node with NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT set
#              (or RDZV_ENDPOINT=host:port for c10d rendezvous); every rank runs efficientsam3-train.
set -euo pipefail

GPUS="${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
GPUS="${GPUS:-1}"
[ "$GPUS" -ge 1 ] || GPUS=1
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
