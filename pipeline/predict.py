"""`ddfp predict`: a checkpoint's reported model on any folder of images. Each readable image gives
`<stem>.png`, the class indices in the VOC palette (what Pascal's SegmentationClass files hold, so
any VOC tool reads them), and `<stem>_overlay.png`, the prediction blended over the image.

Inference follows the evaluation protocol of the dataset the model was trained on (eval.* of the
current config, as `ddfp evaluate` does): the whole image padded to the crop, or sliding windows.
An image that cannot be read is named and skipped; the others are still predicted.
"""

from __future__ import annotations

import sys
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddfp.data.masks import voc_palette
from ddfp.data.transforms import normalize
from ddfp.inference import predict
from pipeline.errors import DataError
from pipeline.figures import colorize
from pipeline.files import write_bytes_atomic
from pipeline.params import Config
from pipeline.train.console import progress_bar
from pipeline.train.export import load_network

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ALPHA = 0.5  # the prediction's weight in the overlay


def image_files(images: Path) -> list[Path]:
    """The image files of the folder (by suffix, sorted); the outputs of an earlier run are not inputs."""
    if not images.is_dir():
        raise DataError(f"--images {images}: not a folder")
    files = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"--images {images}: no image files ({', '.join(SUFFIXES)})")
    return files


def read_rgb(path: Path) -> np.ndarray | str:
    """H x W x 3 uint8, or why the file cannot be read (decoded in full: a truncated JPEG fails here)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except (OSError, ValueError) as err:
        return f"not a readable image ({err})"


def png_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_outputs(rgb: np.ndarray, classes: np.ndarray, out: Path, stem: str) -> None:
    labels = Image.fromarray(classes.astype(np.uint8))  # mode L; putpalette makes it P, the same indices
    labels.putpalette(voc_palette())
    write_bytes_atomic(out / f"{stem}.png", png_bytes(labels))
    blend = (1 - ALPHA) * rgb.astype(np.float32) + ALPHA * colorize(classes).astype(np.float32)
    write_bytes_atomic(out / f"{stem}_overlay.png", png_bytes(Image.fromarray(blend.round().astype(np.uint8))))


def run_predict(cfg: Config, ckpt: Path, images: Path, out: Path) -> dict[str, Any]:
    """Predict every image of `images` into `out`; returns what was written and what was skipped."""
    files = image_files(images)
    net = load_network(ckpt, cfg)
    name, device = net.name, net.device
    model, protocol = net.model.eval(), net.trained.eval_protocol
    skipped: dict[str, str] = {}
    with progress_bar(len(files), 0, f"predict ({name}, {protocol.mode})", True) as bar:
        for path in files:
            rgb = read_rgb(path)
            if isinstance(rgb, str):
                skipped[str(path)] = rgb
                print(f"skipped {path}: {rgb}", file=sys.stderr)
            else:
                img = normalize(torch.from_numpy(rgb).permute(2, 0, 1))[None].to(device)
                write_outputs(rgb, predict(model, img, protocol)[0].cpu().numpy(), out, path.stem)
            bar.update(1)
            bar.set_postfix({"file": path.name})
    if len(skipped) == len(files):
        raise DataError(f"--images {images}: none of the {len(files)} image files could be read")
    return {"model": name, "protocol": protocol.mode, "written": len(files) - len(skipped), "skipped": skipped,
            "out": str(out)}


__all__ = ["run_predict"]
