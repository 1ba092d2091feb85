#!/usr/bin/env bash
# Run an experiment on GPUS processes per node with torchrun (one node, or several).
#
#   lightning_app/launch/torchrun.sh NAME [key=value ...]
#
# Environment (defaults in brackets):
#   GPUS         processes on this node [all visible GPUs]
#   NNODES       nodes [1]; on more than one node run this script on every node with
#   NODE_RANK    this node's rank [0],
#   MASTER_ADDR  node 0's address [localhost] and MASTER_PORT [29500], and
#   RUN_ID       an id unique to this run and the same on every node (e.g. the job id);
#                it names the run folder on all ranks, and a restart with the same RUN_ID
#                continues that run from its last checkpoint [random, one node only].
# Extra torchrun options go in TORCHRUN_ARGS (e.g. "--max-restarts=3").
# data.batch_size is global: it is split over GPUS x NNODES processes.
set -euo pipefail
NAME=${1:?usage: torchrun.sh NAME [key=value ...]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
if [[ -z ${GPUS:-} ]]; then
    GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
    [[ $GPUS -ge 1 ]] || { echo "torchrun.sh: no GPU found; set GPUS" >&2; exit 2; }
fi
if [[ -z ${RUN_ID:-} ]]; then
    [[ $NNODES -eq 1 ]] || { echo "torchrun.sh: set RUN_ID (the same on every node)" >&2; exit 2; }
    RUN_ID=$(od -An -N4 -tx4 /dev/urandom | tr -d " ")  # names the folder <time>-<RUN_ID>
fi
cd "$root"
# shellcheck disable=SC2086
exec .venv/bin/torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$GPUS" \
    --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" --rdzv-id="$RUN_ID" \
    ${TORCHRUN_ARGS:-} -m lightning_app train "$NAME" trainer.devices="$GPUS" \
    trainer.num_nodes="$NNODES" trainer.strategy=ddp "$@"
