"""The confidence threshold of the demo recipe, chosen from the supervised model alone.

The teacher that starts pseudo-labelling is the supervised student at the hand-off (200 iterations
of the demo budget). For thresholds around the authors' 0.95 this prints, on the 184 unlabelled
training images of the 16-label split scored against their real masks with the evaluation
protocol: the confident share, the precision of confident pixels, the foreground coverage and the
background share of confident pixels. No semi-supervised run is involved.
  usage: python benchmarks/threshold_scan.py runs/scan/handoff/seed0/last.pt [...]
  (the checkpoints: supervised demo runs stopped at train.max_iters=200, made by the end of
  benchmarks/recipe_scan.sh)
"""

import json
import sys
from pathlib import Path

import torch

from ddfp import config
from ddfp.data.dataset import SegDataset, read_split_file
from ddfp.data.spec import get_spec
from ddfp.metrics import pseudo_label_counts, pseudo_label_quality
from pipeline import checkpoint
from pipeline.evaluate import class_probs
from pipeline.evaluation_stage import trained_models

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)


def main(ckpts: list[str]) -> None:
    for ckpt in ckpts:
        state = checkpoint.load(Path(ckpt))
        cfg = config.from_mapping(state["config"])
        student = trained_models(state, cfg, torch.device("cpu"))["student"].eval()
        n = get_spec(cfg.data.dataset).num_classes
        lines = read_split_file(Path("data/splits/16/unlabeled.txt"))
        ds = SegDataset(Path("data/dataset"), lines, "val", cfg.data.crop_size, cfg.data.scale_range, n)
        counts = {t: 0 for t in THRESHOLDS}
        for item in torch.utils.data.DataLoader(ds, batch_size=8):
            probs = class_probs(student, item["img"], cfg)
            for t in THRESHOLDS:
                counts[t] = counts[t] + pseudo_label_counts(probs, item["mask"], t)
        for t in THRESHOLDS:
            q = {k: round(v, 3) for k, v in pseudo_label_quality(counts[t]).items()}
            print(json.dumps({"ckpt": ckpt, "seed": cfg.train.seed, "iteration": state["iteration"], "thresh": t, **q}))


if __name__ == "__main__":
    main(sys.argv[1:])
