#!/usr/bin/env bash
# Multi-node training under SLURM with Lightning's own DDP: one task per GPU, every node runs the same
# command, and Lightning reads the cluster (ranks, master address) from SLURM's environment.
#   sbatch --nodes=2 --gpus-per-node=4 scripts/slurm_fit.sh configs/experiment/offline.yaml
#SBATCH --job-name=emotions-pl-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --time=01:00:00
set -euo pipefail
experiment="${1:-configs/experiment/offline.yaml}"
nodes="${SLURM_JOB_NUM_NODES:-2}"
per_node="${SLURM_NTASKS_PER_NODE:-4}"
srun .venv/bin/python -m emotions_pl fit --config "$experiment" \
  --trainer configs/trainer/multinode.yaml --trainer.num_nodes "$nodes" --trainer.devices "$per_node"
