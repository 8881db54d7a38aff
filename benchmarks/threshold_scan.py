"""The confidence threshold of the demo recipe, chosen from the supervised model alone.

The teacher that starts pseudo-labelling is the supervised student at the hand-off (the demo's
train.sup_only_epochs). For thresholds around the authors' 0.95 this prints, on the 184 unlabelled
training images of the 16-label split scored against their real masks with the evaluation
protocol: the confident share, the precision of confident pixels, the foreground coverage and the
background share of confident pixels. No semi-supervised run is involved.
  usage: python benchmarks/threshold_scan.py runs/handoff_scan/handoff200/seed0/last.pt [...]
  (the checkpoints: supervised demo runs stopped at the hand-off, train.max_iters=200, made by
  `HANDOFF=200 benchmarks/handoff_scan.sh`)
"""

import json
import sys
from pathlib import Path

from pipeline import params
from pipeline.evidence.diagnostics import pseudo_label_diagnostics
from pipeline.train import checkpoint

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SPLIT = Path("data/splits/16")


def main(ckpts: list[str]) -> None:
    for ckpt in ckpts:
        state = checkpoint.load(Path(ckpt))
        cfg = params.stored_config(state["config"])
        for t in THRESHOLDS:  # the ablation's own pseudo-label scoring, once per threshold
            q = pseudo_label_diagnostics(params.replace(cfg, {"train.conf_thresh": t}), Path(ckpt),
                                         Path("data/dataset"), SPLIT)
            row = {k.removeprefix("pl_"): round(v, 3) for k, v in q.items() if k != "pl_model"}
            print(json.dumps({"ckpt": ckpt, "seed": cfg.train.seed, "iteration": state["iteration"], "thresh": t, **row}))


if __name__ == "__main__":
    main(sys.argv[1:])
