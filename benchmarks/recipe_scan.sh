#!/usr/bin/env bash
# The demo recipe's scan: supervised-only runs at the smallest split (16 labels, seeds 0 and 1) and
# with every training image labelled (184 + 16, seed 0). Nothing here trains a semi-supervised
# method, so no setting is chosen from DDFP's gain. Every run: the demo profile, a fixed budget of
# train.epochs x 50 iterations, evaluated with whole images and with 64 px sliding windows (the
# training crop). Prints one JSON row per (setting, split, seed, protocol); results go to
# runs/scan/ (not committed) and benchmarks/recipe_scan.json; then the threshold scan.
#   usage: benchmarks/recipe_scan.sh         (needs `dvc repro download splits weights` first)
set -euo pipefail
cd "$(dirname "$0")/.."
DDFP=${DDFP:-.venv/bin/ddfp}
WORK=runs/scan
mkdir -p "$WORK/splits/all"
# The all-labels split: every training image labelled, the same validation list.
cat data/splits/16/labeled.txt data/splits/16/unlabeled.txt > "$WORK/splits/all/labeled.txt"
cp data/splits/16/unlabeled.txt data/splits/16/val.txt "$WORK/splits/all/"

# name | overrides
SETTINGS=(
  "lr1e-3_head256|train.lr=0.001 model.head_channels=256"
  "lr1e-3_head128|train.lr=0.001 model.head_channels=128"
  "lr3e-3_head128|train.lr=0.003 model.head_channels=128"
  "lr3e-4_head128|train.lr=0.0003 model.head_channels=128"
  "lr1e-3_head128_20ep|train.lr=0.001 model.head_channels=128 train.epochs=20"
)
COMMON="train.method=supervised train.iters_per_epoch=50 train.epochs=10 run.eval_every=2 tracking.enabled=false"

one() {  # name overrides split seed
  local name=$1 overrides=$2 split=$3 seed=$4 out="$WORK/$1/$3/seed$4" sets=()
  for kv in $COMMON $overrides train.seed=$seed; do sets+=(--set "$kv"); done
  local dir=data/splits/$split; [ "$split" = all ] && dir=$WORK/splits/all
  "$DDFP" train --profile demo "${sets[@]}" --data data/dataset --split-dir "$dir" \
      --weights data/weights/mobilenet_v2.pth --out "$out" > "$out.log" 2>&1
  "$DDFP" evaluate --profile demo "${sets[@]}" --set eval.mode=whole --set eval.crop_size=128 \
      --ckpt "$out/last.pt" --data data/dataset --split-dir "$dir" --out "$out/whole.json" >> "$out.log" 2>&1
  "$DDFP" evaluate --profile demo "${sets[@]}" --set eval.mode=sliding --set eval.crop_size=64 \
      --ckpt "$out/last.pt" --data data/dataset --split-dir "$dir" --out "$out/sliding64.json" >> "$out.log" 2>&1
}
export -f one; export DDFP WORK COMMON
for s in "${SETTINGS[@]}"; do
  name=${s%%|*} ov=${s#*|}
  for job in "16 0" "16 1" "all 0"; do mkdir -p "$WORK/$name/${job% *}"; echo "$name|$ov|$job"; done
done | OMP_NUM_THREADS=1 xargs -P 2 -I{} bash -c 'IFS="|" read -r n o j <<< "{}"; one "$n" "$o" ${j% *} ${j#* }'

.venv/bin/python - "$WORK" <<'PY'
import json, sys
from pathlib import Path
rows = []
for f in sorted(p for proto in ("whole", "sliding64") for p in Path(sys.argv[1]).glob(f"*/*/seed*/{proto}.json")):
    m = json.loads(f.read_text())
    setting, split, seed = f.parts[-4], f.parts[-3], f.parts[-2]
    rows.append({"setting": setting, "split": split, "seed": int(seed[4:]), "protocol": f.stem,
                 "val_miou": m["val_miou"], "iterations": m["iterations"]})
Path("benchmarks/recipe_scan.json").write_text(json.dumps(rows, indent=1) + "\n")
for r in rows:
    print(json.dumps(r))
PY

# The threshold: the supervised student at the hand-off (200 iterations of the chosen recipe's
# budget) as a pseudo-labeller, seeds 0 and 1 (benchmarks/threshold_scan.py).
for seed in 0 1; do
  out=$WORK/handoff/seed$seed; mkdir -p "$out"
  OMP_NUM_THREADS=1 "$DDFP" train --profile demo --set train.method=supervised --set tracking.enabled=false \
      --set train.max_iters=200 --set train.seed=$seed --data data/dataset --split-dir data/splits/16 \
      --weights data/weights/mobilenet_v2.pth --out "$out" > "$out.log" 2>&1 &
done
wait
.venv/bin/python benchmarks/threshold_scan.py "$WORK"/handoff/seed*/last.pt
