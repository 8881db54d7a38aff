#!/usr/bin/env bash
# Samples per second of one training step against the batch size, one thread (what each of the two
# workers of `make demo` / `make ablation` gets on 2 cores): `ddfp bench step` on the demo setting at
# train.batch_size 2, 4, 8 and 16 (labelled + as many unlabelled), every method. Prints one JSON
# object: {batch: {method: {"step_s": s, "samples_per_s": labelled images per second}}}.
#   usage: benchmarks/throughput.sh [repeats]      (REPEATS rounds per batch size, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
for b in 2 4 8 16; do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/ddfp bench step --settings demo --repeats "$REPEATS" --json \
      --set train.batch_size=$b | .venv/bin/python -c "
import json, sys
d = json.load(sys.stdin)['demo']
print(json.dumps({'batch': $b, **{k[:-2]: {'step_s': v, 'samples_per_s': round($b / v, 2)}
                                  for k, v in d.items() if k.endswith('_s') and not k.startswith('ddfp_logged')}}))"
done | .venv/bin/python -c "
import json, sys
rows = [json.loads(line) for line in sys.stdin]
print(json.dumps({str(r.pop('batch')): r for r in rows}, indent=1))"
