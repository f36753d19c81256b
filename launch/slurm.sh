#!/usr/bin/env bash
# Run a recipe on several SLURM nodes: one `accelerate launch` per node, all joining one job.
#   sbatch --nodes 2 launch/slurm.sh recipes/rlhf.yaml [launch/multinode_zero2.yaml]
#SBATCH --job-name=alignment-pipeline
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --output=slurm-%j.out
set -euo pipefail
RECIPE=${1:?usage: sbatch --nodes N launch/slurm.sh RECIPE [ACCELERATE_CONFIG]}
CONFIG=${2:-launch/multinode_zero2.yaml}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
# sed reads every line: `head -n 1` would end the pipe early, and under pipefail the SIGPIPE fails the job
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( SLURM_CPUS_PER_TASK / GPUS_PER_NODE ))}
# The project's virtualenv must be on shared storage (or built on every node with `make setup`).
srun bash -c ".venv/bin/accelerate launch --config_file $CONFIG \
    --num_machines $SLURM_NNODES --num_processes $(( SLURM_NNODES * GPUS_PER_NODE )) \
    --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_IP --main_process_port 29500 \
    -m pipeline run $RECIPE"
