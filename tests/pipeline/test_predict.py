"""`ddfp predict` on a folder with readable and unreadable images: VOC-palette class PNGs that are the
evaluation's own predictions, overlays, and the unreadable files named and skipped."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddfp.data.dataset import SegDataset
from ddfp.data.masks import voc_palette
from ddfp.metrics import confusion_matrix
from pipeline.train.export import load_network
from pipeline.train.export import export_run
from pipeline.train.fit import fit
from pipeline.train.loaders import read_split_file
from pipeline.train.validation import confusion
from tests.helpers.smoke import paths, tiny_cfg

PREDICT = [sys.executable, "-m", "pipeline.cli", "predict", "--profile", "smoke", "--set", "model.pretrained=false",
           "--set", "data.crop_size=32"]


def test_predict_writes_the_evaluation_s_predictions_and_skips_unreadable_images(tiny_data, tmp_path):
    cfg = tiny_cfg(**{"train.max_iters": 12})  # into the DDFP phase: the teacher is the reported model
    fit(cfg, paths(tiny_data, tmp_path / "run"), progress=False)
    ckpt = export_run(cfg, tmp_path / "run", tmp_path / "model")  # model.pt, what the train stage exports
    lines = read_split_file(tiny_data / "splits" / "8" / "val.txt")[:2]
    images = tmp_path / "images"
    images.mkdir()
    for image, _ in lines:
        shutil.copy(tiny_data / "dataset" / image, images)
    (images / "broken.jpg").write_bytes(b"not an image at all")
    whole = (tiny_data / "dataset" / lines[0][0]).read_bytes()
    (images / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "notes.txt").write_text("not an input")
    done = subprocess.run(PREDICT + ["--ckpt", str(ckpt), "--images", str(images), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["written"] == 2 and summary["model"] == "teacher" and summary["protocol"] == cfg.eval.mode
    assert set(summary["skipped"]) == {str(images / "broken.jpg"), str(images / "truncated.jpg")}
    assert f"skipped {images / 'broken.jpg'}: not a readable image" in done.stderr
    assert f"skipped {images / 'truncated.jpg'}: not a readable image" in done.stderr
    # The class maps are the evaluation's: the confusion matrix from the PNGs and the masks equals the
    # one the validation computes for the same two images with the same model and protocol.
    n = cfg.spec.num_classes
    ours = torch.zeros(n, n, dtype=torch.long)
    dataset = SegDataset(tiny_data / "dataset", lines, "val", cfg.data.crop_size, cfg.data.scale_range, n)
    for (image, _), sample in zip(lines, dataset):
        png = Image.open(tmp_path / "out" / f"{image.rsplit('/', 1)[-1].rsplit('.', 1)[0]}.png")
        assert png.mode == "P" and png.getpalette()[:768] == voc_palette()[: len(png.getpalette()[:768])]
        classes = torch.from_numpy(np.asarray(png).astype(np.int64))
        assert classes.shape == sample["mask"].shape and int(classes.max()) < n
        ours += confusion_matrix(classes[None], sample["mask"][None], n)
        overlay = Image.open(tmp_path / "out" / f"{image.rsplit('/', 1)[-1].rsplit('.', 1)[0]}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == png.size
    teacher = load_network(ckpt, cfg).model
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    assert torch.equal(ours, confusion(teacher, loader, cfg, torch.device("cpu")))
    assert not (tmp_path / "out" / "notes.png").exists()
    # Nothing readable at all: an error naming the folder, nothing written.
    for good in [p for p in images.iterdir() if p.name not in ("broken.jpg", "truncated.jpg")]:
        good.unlink()
    none = subprocess.run(PREDICT + ["--ckpt", str(ckpt), "--images", str(images), "--out", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert none.returncode == 3 and f"--images {images}: none of the 2 image files could be read" in none.stderr
    assert not (tmp_path / "none").exists()


def test_predict_refuses_a_folder_without_images_and_a_missing_checkpoint(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    args = ["--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out")]
    empty = subprocess.run(PREDICT + args + ["--images", str(tmp_path / "images")], capture_output=True, text=True)
    assert empty.returncode == 3 and f"--images {tmp_path / 'images'}: no image files" in empty.stderr
    shutil.copy(Path(__file__), tmp_path / "images" / "code.png")  # a file, but no image
    missing = subprocess.run(PREDICT + args + ["--images", str(tmp_path / "images")], capture_output=True, text=True)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "none.pt" in missing.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
