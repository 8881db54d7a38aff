#!/usr/bin/env bash
# Time of a `dvc repro` with nothing changed (median of 5), as JSON. In a fresh clone-like copy of
# this working tree (tracked and untracked, not ignored, files: uncommitted dvc.yaml edits count),
# switched to the smoke profile and fully reproduced first. The no-op is what every `dvc repro`
# pays: hashing every stage's deps (data, code) and outs.
# Usage: benchmarks/noop_repro.sh [VENV]   (default: this checkout's .venv; about 2 min on 2 cores)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "${1:-$src/.venv}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$src" && git ls-files -co --exclude-standard -z) | (cd "$src" && xargs -0 cp --parents -t "$work")
cd "$work"
# PYTHONPATH: the stages run the copy's code (the venv's editable install points at the checkout).
export PATH="$venv/bin:$PATH" PYTHONPATH="$work" DVC_NO_ANALYTICS=1 MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
ddfp profile smoke >/dev/null
git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm copy
dvc repro >repro.log 2>&1 || { tail -20 repro.log >&2; exit 1; }
times=()
for _ in 1 2 3 4 5; do
  start=$(date +%s.%N)
  out=$(dvc repro 2>&1)
  times+=("$(printf '%.2f' "$(echo "$(date +%s.%N) - $start" | bc)")")
  if grep -q "Running stage" <<<"$out"; then echo "not a no-op: $out" >&2; exit 1; fi
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
printf '{"noop_repro_median_s": %s, "noop_repro_s": [%s], "profile": "smoke", "stages": %d}\n' \
  "$median" "$(IFS=,; echo "${times[*]}")" "$(dvc stage list 2>/dev/null | wc -l)"
