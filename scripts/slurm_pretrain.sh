#!/usr/bin/env bash
# Multi-node pretraining under SLURM: one `accelerate launch` per node, each told the node count, its own rank and
# the main node's address, taken from the SLURM environment.
#
#   sbatch --nodes 2 scripts/slurm_pretrain.sh recipe/configs/gemma3-270m-tinystories.yaml [--key value ...]
#
# GPUS_PER_NODE (default 8), MAIN_PROCESS_PORT (default 29500) and ACCELERATE_CONFIG (default
# accelerate_configs/multi_node.yaml; use an FSDP config for models that do not fit one GPU) may be set.
#SBATCH --job-name=gemma3-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-accelerate_configs/multi_node.yaml}
MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export GPUS_PER_NODE MAIN_PROCESS_PORT ACCELERATE_CONFIG MAIN_PROCESS_IP

# Single quotes: SLURM_NODEID is read on each node, not here; "$@" passes the recipe and its overrides unchanged.
srun --ntasks-per-node=1 bash -c '
  exec accelerate launch \
    --config_file "$ACCELERATE_CONFIG" \
    --num_machines "$SLURM_NNODES" \
    --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))" \
    --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MAIN_PROCESS_IP" \
    --main_process_port "$MAIN_PROCESS_PORT" \
    run_pretrain.py "$@"
' slurm_pretrain "$@"
