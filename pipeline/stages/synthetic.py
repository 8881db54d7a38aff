"""Writing the generated demo dataset to disk in VOC layout.

Layout (what Pascal VOC ships, so the synthetic set travels the same code path as the real one):
    root/JPEGImages/<id>.jpg                      quality 95
    root/SegmentationClass/<id>.png               palette PNG, VOC colour map, index 255 = void
    root/ImageSets/Segmentation/{train,val}.txt   bare ids
    root/synthetic.json                           the generator settings (marks the folder as ours)
Everything is written into a temporary sibling folder and moved into place only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ddfp.data.masks import voc_palette
from ddfp.data.synthetic import generate
from pipeline.files import atomic_directory
from pipeline.params import Config

JPEG_QUALITY = 95
MARKER = "synthetic.json"


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask)  # mode L; putpalette turns it into P with the same indices
    image.putpalette(voc_palette())
    image.save(path)


def _check_replaceable(root: Path) -> None:
    # Never delete a folder we did not write (a real dataset, a typo in --out).
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise FileExistsError(f"{root} exists and is not a generated synthetic dataset (no {MARKER}); not replacing it")


def write_synthetic(cfg: Config, root: Path) -> None:
    """Generate cfg.synthetic's dataset into root (VOC layout), atomically replacing an earlier one."""
    root = Path(root)
    _check_replaceable(root)
    syn = cfg.synthetic
    ids: dict[str, list[str]] = {"train": [], "val": []}
    with atomic_directory(root) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        total = syn.num_train + syn.num_val
        for image_id, image, mask, split in tqdm(generate(syn), total=total, desc="synthetic", unit="img"):
            Image.fromarray(image).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=JPEG_QUALITY)
            save_palette_png(mask, tmp / "SegmentationClass" / f"{image_id}.png")
            ids[split].append(image_id)
        for split, names in ids.items():
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        (tmp / MARKER).write_text(json.dumps(syn.model_dump(mode="json"), indent=2) + "\n")

