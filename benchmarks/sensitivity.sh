#!/usr/bin/env bash
# eps and confidence-threshold sensitivity of DDFP at the demo's smallest split, seed 0, on the
# ablation's schedule: one setting changed at a time from the defaults (eps 4, threshold 0.8), and
# mean teacher beside DDFP where the threshold changes (it sets both methods' pseudo-labels).
# The default cell is the ablation's own seed-0 run (same config and seed: the same numbers on CPU).
# Usage: benchmarks/sensitivity.sh   (after `make ablation`; about 4 minutes per run on 2 cores)
# Writes reports/sensitivity.json and reports/sensitivity.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ddfp=${DDFP:-.venv/bin/ddfp}
split=$(.venv/bin/python -c "from pipeline import params; print(params.load('params.yaml').data.splits[0])")
run() {  # name methods overrides...
  local name=$1 methods=$2; shift 2
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  "$ddfp" ablation --methods "$methods" --seeds 0 --set "data.splits=['$split']" "${sets[@]}" \
    --work "runs/sensitivity/$name" --out "runs/sensitivity/$name" >/dev/null
}
run eps-1 ddfp perturb.eps=1.0
run eps-16 ddfp perturb.eps=16.0
run thresh-0.95 mean_teacher,ddfp train.conf_thresh=0.95
.venv/bin/ddfp sensitivity --split "$split" --runs runs/sensitivity --ablation runs/ablation \
  --out reports
