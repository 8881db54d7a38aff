#!/usr/bin/env bash
# Pipeline figures as JSON: `dvc repro` of the committed params in a fresh clone (wall time, peak RSS
# of any stage process), then `dvc repro` with nothing changed.
# Usage: benchmarks/pipeline.sh [VENV]   (default: this checkout's .venv, so pip is not timed)
# JOBS=N benchmarks/pipeline.sh: the same with `ddfp submit --local -j N` (N local workers) instead of
# the sequential `dvc repro`.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "${1:-$src/.venv}" && pwd)
work=$(mktemp -d)
git clone -q "$src" "$work/clone"
cd "$work/clone"
export PATH="$venv/bin:$PATH" DVC_NO_ANALYTICS=1
if [ -n "${JOBS:-}" ]; then run=(ddfp submit --local -j "$JOBS"); else run=(dvc repro); fi
/usr/bin/time -f '%e %M' -o demo.time "${run[@]}" >demo.log 2>&1
/usr/bin/time -f '%e %M' -o noop.time dvc repro >noop.log 2>&1
read -r demo_s demo_kb < demo.time
read -r noop_s _ < noop.time
printf '{"command": "%s", "repro_s": %s, "peak_rss_gb": %.2f, "noop_repro_s": %s, "clone": "%s"}\n' \
  "${run[*]}" "$demo_s" "$(echo "$demo_kb / 1048576" | bc -l)" "$noop_s" "$work/clone"
