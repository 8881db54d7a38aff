#!/usr/bin/env bash
# `ddfp bench step --json` of an earlier commit and of this checkout, back to back in one run (the
# machine is noisy: compare ratios measured together). The earlier code runs from a temporary git
# worktree (run from there, so its packages come first on sys.path); both use this checkout's .venv.
# Usage: benchmarks/compare_step.sh BEFORE_REV [SETTINGS]   e.g. benchmarks/compare_step.sh 97b4368 demo,paper
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: compare_step.sh BEFORE_REV [SETTINGS]}
settings=${2:-demo,paper}
before=$(mktemp -d)
trap 'git worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git worktree add -q --detach "$before" "$rev"
py=$PWD/.venv/bin/python
bench() { "$py" -m pipeline.cli bench step --json --repeats 3 --settings "$settings"; }
b=$(cd "$before" && "$py" -c 'import pipeline, sys; assert pipeline.__file__.startswith(sys.argv[1])' "$before" && bench)
a=$(bench)
printf '{"before": {"rev": "%s", "result": %s}, "after": {"rev": "%s", "result": %s}}\n' \
  "$(git rev-parse --short "$rev")" "$b" "$(git rev-parse --short HEAD)" "$a"
