#!/usr/bin/env bash
# The demo's schedule, chosen from the run that bounds the question: supervised training with every
# training image labelled (the smallest split's labelled and unlabelled lists joined), at several
# budgets of epochs of 50 iterations (the poly schedule decays over each budget), seeds 0 and 1,
# validation every 5 epochs. No semi-supervised method trains here, so no setting is chosen from
# DDFP's (or any method's) gain. Two one-thread processes at a time.
#   usage: benchmarks/schedule_scan.sh   (needs `dvc repro download splits weights` first)
#   BATCHES="4 8" EPOCHS="10 15 20 30" SEEDS="0 1" (the defaults) choose the grid; finished runs are
#   found finished, so a rerun only adds what is missing. Rows -> benchmarks/schedule_scan.json
set -euo pipefail
cd "$(dirname "$0")/.."
DDFP=${DDFP:-.venv/bin/ddfp}
WORK=${WORK:-runs/schedule_scan}
BATCHES=${BATCHES:-4 8} EPOCHS=${EPOCHS:-10 15 20 30} SEEDS=${SEEDS:-0 1}
mkdir -p "$WORK/splits/all"
cat data/splits/16/labeled.txt data/splits/16/unlabeled.txt > "$WORK/splits/all/labeled.txt"
cp data/splits/16/unlabeled.txt data/splits/16/val.txt "$WORK/splits/all/"

one() {  # batch epochs seed
  local out="$WORK/b$1_ep$2/seed$3"
  mkdir -p "$out"
  "$DDFP" train --profile demo --set train.method=supervised --set train.batch_size="$1" --set train.epochs="$2" \
      --set train.seed="$3" --set run.eval_every=5 --set tracking.enabled=false --data data/dataset \
      --split-dir "$WORK/splits/all" --weights data/weights/mobilenet_v2.pth --out "$out" > "$out.log" 2>&1
}
export -f one; export DDFP WORK
for b in $BATCHES; do for e in $EPOCHS; do for s in $SEEDS; do echo "$b $e $s"; done; done; done \
  | OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 xargs -P 2 -L 1 bash -c 'one "$@"' _

.venv/bin/python - "$WORK" <<'PY'
import json, sys
from pathlib import Path
rows = []
for log in sorted(Path(sys.argv[1]).glob("b*_ep*/seed*/val_log.json")):
    batch, epochs = (int(x) for x in log.parts[-3][1:].split("_ep"))
    for entry in json.loads(log.read_text()):
        rows.append({"batch": batch, "epochs": epochs, "seed": int(log.parts[-2][4:]),
                     "iteration": entry["iteration"], "val_miou": entry["val_miou_student"]})
Path("benchmarks/schedule_scan.json").write_text(json.dumps(rows, indent=1) + "\n")
for r in rows:
    print(json.dumps(r))
PY
