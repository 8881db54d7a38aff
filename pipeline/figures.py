"""Matplotlib figures for runs and reports (Agg backend: no display on cluster nodes or in CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ddfp.data.masks import voc_palette  # noqa: E402
from ddfp.data.spec import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pipeline.files import atomic_write  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    """Write through a unique temporary file so a reader never sees half a PNG."""
    try:
        with atomic_write(path) as fh:
            fig.savefig(fh, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (rows: ground truth), so small classes stay readable."""
    m = np.asarray(cm, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.6 + 0.45 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row")
    return save(fig, path)


def colorize(mask: np.ndarray) -> np.ndarray:
    """H x W class indices (IGNORE_INDEX allowed) -> H x W x 3 uint8 with the VOC palette."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.clip(mask, 0, 255).astype(np.uint8)]


def denormalize(img: np.ndarray) -> np.ndarray:
    """3 x H x W normalised image -> H x W x 3 in [0, 1]."""
    x = img.transpose(1, 2, 0) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(x, 0, 1)


def overlay_figure(img: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str, path: Path) -> Path:
    """Image | ground truth | prediction blended over the image (ignored pixels shown white in gt)."""
    rgb = denormalize(img)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    pred_rgb = colorize(pred) / 255.0
    for ax, picture, name in zip(axes, (rgb, colorize(gt), 0.45 * rgb + 0.55 * pred_rgb),
                                 ("image", "ground truth", "prediction")):
        ax.imshow(picture)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    return save(fig, path)


def miou_vs_labels(summary: pd.DataFrame, path: Path, title: str,
                   reference: tuple[str, float] | None = None) -> Path:
    """mIoU (mean, std error bars over seeds) against the number of labelled images, one line per method.

    summary columns: method, labels (int), mean, std. reference: (label, mIoU) drawn as a horizontal
    line, e.g. the model trained on every label.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in summary.sort_values("labels").groupby("method", sort=False):
        ax.errorbar(rows["labels"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=4, label=method)
    if "paper" in summary.columns and summary["paper"].notna().any():
        ref = summary.dropna(subset=["paper"]).drop_duplicates("labels").sort_values("labels")
        ax.plot(ref["labels"], ref["paper"], "k--", marker="x", label="DDFP paper (Pascal)")
    if reference is not None:
        ax.axhline(reference[1], color="grey", linestyle=":", label=reference[0])
    ax.set_xscale("log")
    ticks = sorted(summary["labels"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled images")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def class_heatmap(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Rows: runs (e.g. 'ddfp / 16'), columns: classes, cells: IoU (%)."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * table.shape[1], 1.2 + 0.45 * table.shape[0]))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=90)
    ax.set_yticks(range(table.shape[0]), table.index)
    for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="IoU (%)")
    return save(fig, path)


def training_curves(curves: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Loss and val mIoU against iteration, one line per run. Each frame: step, loss, val_miou."""
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, frame in curves.items():
        if "loss" in frame:
            loss = frame.dropna(subset=["loss"])
            ax_loss.plot(loss["step"], loss["loss"], label=label)
        if "val_miou" in frame:
            val = frame.dropna(subset=["val_miou"])
            ax_miou.plot(val["step"], val["val_miou"], marker="o", label=label)
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="loss")
    ax_miou.set(xlabel="iteration", ylabel="val mIoU (%)", title="validation")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return save(fig, path)
