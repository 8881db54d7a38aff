"""Every listed image and mask is decoded once, at split time, and every bad one named in one error.

A truncated JPEG only fails when its bytes are decoded: without this check it stops training mid-epoch,
and, sampling being deterministic, again after every resume. Decoding runs in a thread pool (PIL
releases the GIL while it decodes, and network file systems are latency bound).
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ddfp.data.masks import classes_present, read_mask
from pipeline.errors import DataError

Pair = tuple[str, str]  # (image path, mask path), relative to the data root
# What a corrupt file makes PIL raise: OSError (truncated, unidentified), ValueError or SyntaxError
# (broken headers) and DecompressionBombError (absurd sizes).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def leaves_root(rel: str) -> bool:
    """An absolute path, or one whose '..' climbs above the data root (symlinks inside it are fine)."""
    norm = posixpath.normpath(rel)
    return posixpath.isabs(rel) or norm == ".." or norm.startswith("../")


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # Image.open reads the header only
        return image.height, image.width


def _check_pair(root: Path, num_classes: int, pair: Pair) -> tuple[list[tuple[Path, str]], set[int] | None]:
    """(the pair's problems as (file, why), the mask's classes or None if it is unusable)."""
    problems: list[tuple[Path, str]] = []
    image_path, mask_path = root / pair[0], root / pair[1]
    size = mask = None
    for path in (image_path, mask_path):
        if not path.is_file():
            problems.append((path, "does not exist"))
    try:
        size = _image_size(image_path) if image_path.is_file() else None
    except DECODE_ERRORS as err:
        problems.append((image_path, f"image does not decode: {type(err).__name__}: {err}"))
    try:
        mask = read_mask(mask_path, num_classes) if mask_path.is_file() else None
    except DECODE_ERRORS as err:
        why = str(err).removeprefix(f"{mask_path}: ")
        problems.append((mask_path, why if isinstance(err, ValueError) else f"mask does not decode: {err}"))
    if size is not None and mask is not None and mask.shape != size:
        problems.append((mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} px, its image {size[1]}x{size[0]}"))
    return problems, (classes_present(mask) if mask is not None else None)


def check_listed(root: Path, listed: dict[Pair, str], num_classes: int) -> dict[Pair, set[int]]:
    """Decode every pair (listed maps it to the list naming it); return the classes of each mask.

    Raises one DataError naming every file that is missing, does not decode, has non-class mask
    values or a size unlike its image, and every entry that leaves the data root.
    """
    problems = [f"{source}: {rel}: leaves the data root"
                for pair, source in listed.items() for rel in pair if leaves_root(rel)]
    todo = [pair for pair in listed if not any(leaves_root(rel) for rel in pair)]
    check = partial(_check_pair, Path(root), num_classes)
    classes: dict[Pair, set[int]] = {}
    with ThreadPoolExecutor() as pool:
        results = tqdm(pool.map(check, todo), total=len(todo), desc="decoding images and masks", unit="pair",
                       disable=None)
        for pair, (bad, mask_classes) in zip(todo, results):
            problems += [f"{listed[pair]}: {Path(pair[0]).stem}: {path}: {why}" for path, why in bad]
            if mask_classes is not None:
                classes[pair] = mask_classes
    if problems:
        raise DataError(f"{len(problems)} problem(s) in the listed images and masks (nothing written):\n  "
                        + "\n  ".join(problems))
    return classes
