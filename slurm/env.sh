# Sourced by every SLURM job before training (the default slurm.setup): the job's environment on the
# compute node. Cluster-specific lines (module load ..., conda activate ...) go into slurm.setup in
# params.yaml, before or instead of this file. Credentials come from the submitting environment
# (sbatch exports it), never from here.
_ddfp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$_ddfp_root/.venv/bin/activate" ]; then
  source "$_ddfp_root/.venv/bin/activate"
fi
# One BLAS/OpenMP thread pool per task, sized to its CPUs (not to the whole node).
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
# NCCL: fail a hung collective instead of blocking until the time limit.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
unset _ddfp_root
