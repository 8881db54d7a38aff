#!/usr/bin/env bash
# The hand-off and the threshold of the demo recipe, from supervised runs at 16 labels only (no
# semi-supervised method trains here). Part 1: the supervised validation curve, one evaluation per
# epoch for the first 6 epochs of the demo budget (seeds 0 and 1): the hand-off is where it flattens.
# Part 2 (HANDOFF=<iterations>): the supervised student stopped at the hand-off, scored as a
# pseudo-labeller at several thresholds (benchmarks/threshold_scan.py).
#   usage: benchmarks/handoff_scan.sh; HANDOFF=200 benchmarks/handoff_scan.sh
#   (needs `dvc repro download splits weights`; the demo profile gives batch, budget and LR)
set -euo pipefail
cd "$(dirname "$0")/.."
DDFP=${DDFP:-.venv/bin/ddfp}
WORK=${WORK:-runs/handoff_scan}
COMMON="--profile demo --set train.method=supervised --set tracking.enabled=false --data data/dataset
        --split-dir data/splits/16 --weights data/weights/mobilenet_v2.pth"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ -z "${HANDOFF:-}" ]; then
  for seed in 0 1; do
    out=$WORK/curve/seed$seed; mkdir -p "$out"
    # shellcheck disable=SC2086
    "$DDFP" train $COMMON --set train.seed=$seed --set run.eval_every=1 --set train.max_iters=300 \
        --out "$out" > "$out.log" 2>&1 &
  done
  wait
  for seed in 0 1; do
    .venv/bin/python -c "import json,sys; [print(json.dumps({'seed': $seed, 'iteration': e['iteration'], 'val_miou': e['val_miou_student']})) for e in json.load(open(sys.argv[1]))]" "$WORK/curve/seed$seed/val_log.json"
  done
else
  for seed in 0 1; do
    out=$WORK/handoff$HANDOFF/seed$seed; mkdir -p "$out"
    # shellcheck disable=SC2086
    "$DDFP" train $COMMON --set train.seed=$seed --set train.max_iters="$HANDOFF" --out "$out" > "$out.log" 2>&1 &
  done
  wait
  .venv/bin/python benchmarks/threshold_scan.py "$WORK"/handoff"$HANDOFF"/seed*/last.pt
fi
