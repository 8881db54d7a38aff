"""Split lists: labelled / unlabelled / val in UniMatch's format, checked, with a manifest.

    out_dir/<split>/{labeled,unlabeled,val}.txt   lines "image mask", relative to the data root
    out_dir/splits.json                           per split: counts, sha256 of each list, source, seed

Published splits (Pascal, Cityscapes) are read from ``data_root/published_splits/<split>/`` in DDFP's
format (bare Pascal ids; Cityscapes ``leftImg8bit/...`` paths) or UniMatch's ("image mask" lines),
validated against the published counts and against the sha256 that download.files pins for the file
(a list of the right sizes but other content, e.g. a published split from before its authors' fix, is
refused by name), and converted. A numeric split that is not published is drawn
with ``data.split_seed`` from the training pool, resampled until the labelled part shows every class.
Every listed image and mask is decoded before anything is written (pipeline.stages.data_check), so a corrupt
file is named here rather than mid-training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ddfp.config import ConfigError
from ddfp.data.spec import DatasetSpec
from pipeline.errors import DataError
from pipeline.files import atomic_directory
from pipeline.params import Config
from pipeline.stages.data_check import Pair, check_listed

LISTS = ("labeled", "unlabeled", "val")
COVERAGE_DRAWS = 1000  # draws of a seeded split before giving up on covering every class

# Published (labelled, unlabelled) counts: DDFP's classic and blended Pascal splits, U2PL's Cityscapes.
PUBLISHED_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    "pascal": {
        "92": (92, 10490), "183": (183, 10399), "366": (366, 10216), "732": (732, 9850), "1464": (1464, 9118),
        "662": (662, 9920), "1323": (1323, 9259), "2646": (2646, 7936), "5291": (5291, 5291),
    },
    "cityscapes": {"186": (186, 2789), "372": (372, 2603), "744": (744, 2231), "1488": (1488, 1487)},
}
PUBLISHED_VAL = {"pascal": 1449, "cityscapes": 500}
CITY_IMAGE_SUFFIX, CITY_MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"


def _pair_from_token(token: str, spec: DatasetSpec) -> Pair:
    """One-column DDFP line -> (image, mask): a bare Pascal id or a Cityscapes leftImg8bit path."""
    if spec.name == "cityscapes":
        prefix = spec.image_dir + "/"
        if not (token.startswith(prefix) and token.endswith(CITY_IMAGE_SUFFIX)):
            raise ValueError(f"expected {prefix}...{CITY_IMAGE_SUFFIX}, got {token!r}")
        stem = token[len(prefix): -len(CITY_IMAGE_SUFFIX)]
        return token, f"{spec.mask_dir}/{stem}{CITY_MASK_SUFFIX}"
    if "/" in token:
        raise ValueError(f"expected a bare image id, got {token!r}")
    return f"{spec.image_dir}/{token}.jpg", f"{spec.mask_dir}/{token}.png"


def read_published(path: Path, spec: DatasetSpec) -> list[Pair]:
    """A published list in DDFP's one-column or UniMatch's two-column format; duplicates refused."""
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        try:
            if len(fields) > 2:
                raise ValueError(f"expected 'id', 'path' or 'image mask', got {line!r}")
            if fields:
                pairs.append((fields[0], fields[1]) if len(fields) == 2 else _pair_from_token(fields[0], spec))
        except ValueError as err:
            raise DataError(f"{path}:{number}: {err}") from None
    seen: set[str] = set()
    for image, _ in pairs:
        if image in seen:
            raise DataError(f"{path}: {image} is listed twice")
        seen.add(image)
    return pairs


def check_disjoint(lists: dict[str, list[Pair]], sources: dict[str, Path | str]) -> None:
    """No image is in two of the lists (labelled, unlabelled, val; or a seeded split's pool and val)."""
    names = list(lists)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted({p[0] for p in lists[a]} & {p[0] for p in lists[b]})
            if shared:
                ids = ", ".join(Path(s).stem for s in shared[:5])
                raise DataError(f"{sources[a]} and {sources[b]} share {len(shared)} images, e.g. {ids}")


def _check_counts(dataset: str, split: str, lists: dict[str, list[Pair]], sources: dict[str, Path]) -> None:
    """A split published under a known name must have its published sizes (other names: user lists)."""
    expected = PUBLISHED_COUNTS.get(dataset, {}).get(split)
    if expected is None:
        return
    got = (len(lists["labeled"]), len(lists["unlabeled"]))
    if got != expected:
        raise DataError(f"{sources['labeled'].parent}: split {split} has {got[0]} labelled / {got[1]} unlabelled "
                        f"images, published {expected[0]} / {expected[1]}")
    if len(lists["val"]) != PUBLISHED_VAL[dataset]:
        raise DataError(f"{sources['val']}: {len(lists['val'])} images, published {PUBLISHED_VAL[dataset]}")


def seeded_split(
    train: list[Pair], n: int, seed: int, num_classes: int, classes_of: Callable[[Pair], set[int]]
) -> tuple[list[Pair], list[Pair]]:
    """n labelled images drawn from train (seed, n) until they show all classes; the rest unlabelled."""
    if not 0 < n < len(train):
        raise ConfigError(f"data.splits: split {n}: need 0 < labelled < {len(train)} training images")
    rng = np.random.default_rng([seed, n])
    wanted = set(range(num_classes))
    for _ in range(COVERAGE_DRAWS):
        chosen = set(rng.choice(len(train), size=n, replace=False).tolist())
        if wanted <= set().union(*(classes_of(train[i]) for i in chosen)):
            labeled = [p for i, p in enumerate(train) if i in chosen]  # keep the pool's order
            return labeled, [p for i, p in enumerate(train) if i not in chosen]
    missing = wanted - set().union(*(classes_of(p) for p in train))
    reason = f"classes {sorted(missing)} never occur in the training pool" if missing else (
        f"no draw of {n} images out of {COVERAGE_DRAWS} (seed {seed}) covered every class; use a larger split")
    raise ConfigError(f"data.splits: split {n}: cannot cover all {num_classes} classes: {reason}")


def _synthetic_pool(root: Path, spec: DatasetSpec) -> tuple[list[Pair], list[Pair]]:
    """(train, val) from the VOC ImageSets lists that write_synthetic produced."""
    def read(split: str) -> list[Pair]:
        path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the download stage first")
        return read_published(path, spec)

    return read("train"), read("val")


def _published_dirs(root: Path) -> dict[str, Path]:
    base = root / "published_splits"
    return {d.name: d for d in sorted(base.iterdir()) if d.is_dir()} if base.is_dir() else {}


def pinned_sha256(cfg: Config) -> dict[str, str]:
    """Path under the data root -> the sha256 that download.files pins for it."""
    return {f.dest: f.sha256 for f in cfg.download.files if f.sha256}


def check_pinned(path: Path, root: Path, pins: dict[str, str]) -> None:
    """A list whose content download.files pins must have that content: counts and disjointness pass
    for another list of the same sizes (an older version of a published split, say)."""
    want = pins.get(path.relative_to(root).as_posix())
    if want is None:
        return
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != want:
        raise DataError(f"{path}: sha256 {found}, but download.files pins {want}: not the published list "
                        "(delete it and run the download stage again)")


def _load_published(root: Path, split_dir: Path, spec: DatasetSpec,
                    pins: dict[str, str]) -> tuple[dict[str, list[Pair]], dict[str, Path]]:
    sources = {"labeled": split_dir / "labeled.txt", "unlabeled": split_dir / "unlabeled.txt",
               "val": root / "published_splits" / "val.txt"}
    for path in sources.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (published split lists come from the download stage)")
        check_pinned(path, root, pins)
    return {name: read_published(path, spec) for name, path in sources.items()}, sources


def _train_pool(root: Path, spec: DatasetSpec, published: dict[str, Path],
                pins: dict[str, str]) -> tuple[list[Pair], list[Pair]]:
    """(train, val) for a new split of a real dataset: the union of the published splits' lists."""
    if not published:
        raise FileNotFoundError(f"{root / 'published_splits'}: no published splits to take a training list from")
    pool: dict[str, Pair] = {}
    for split_dir in published.values():
        lists, _ = _load_published(root, split_dir, spec, pins)
        pool.update({p[0]: p for p in lists["labeled"] + lists["unlabeled"]})
    val = read_published(root / "published_splits" / "val.txt", spec)
    return list(pool.values()), val


@dataclass(frozen=True)
class _Plan:
    """Where one split's lists come from: published (seed None), or a seeded draw from lists["train"]."""

    lists: dict[str, list[Pair]]  # published: labeled, unlabeled, val; seeded: train (the pool), val
    sources: dict[str, Path | str]
    seed: int | None


def _plan(cfg: Config, root: Path, split: str, spec: DatasetSpec) -> _Plan:
    """Read (not yet decode) the lists one split is made from, and check their counts and overlap."""
    published = {} if spec.name == "synthetic" else _published_dirs(root)
    if split in published:
        lists, sources = _load_published(root, published[split], spec, pinned_sha256(cfg))
        _check_counts(spec.name, split, lists, sources)
        check_disjoint(lists, sources)
        return _Plan(lists, sources, None)
    if split in PUBLISHED_COUNTS.get(spec.name, {}):
        # A seeded stand-in would silently differ from the published ids the paper's numbers use.
        raise FileNotFoundError(f"split {split} is a published {spec.name} split but "
                                f"{root / 'published_splits' / split} is missing: run the download stage")
    if not split.isdigit():
        raise ConfigError(f"data.splits: {split!r} is not published under {root / 'published_splits'} "
                          "and not a number")
    train, val = _synthetic_pool(root, spec) if spec.name == "synthetic" else _train_pool(root, spec, published, pinned_sha256(cfg))
    plan = _Plan({"train": train, "val": val}, {name: f"split {split} ({name}, seeded)" for name in ("train", "val")},
                 cfg.data.split_seed)
    check_disjoint(plan.lists, plan.sources)
    return plan


def _listed(plans: dict[str, _Plan]) -> dict[Pair, str]:
    """Every pair of every plan, once, with the first list that names it."""
    listed: dict[Pair, str] = {}
    for plan in plans.values():
        for name, pairs in plan.lists.items():
            for pair in pairs:
                listed.setdefault(pair, str(plan.sources[name]))
    return listed


def _draw(plan: _Plan, split: str, num_classes: int, classes_of: Callable[[Pair], set[int]]) -> dict[str, list[Pair]]:
    if plan.seed is None:
        return plan.lists
    labeled, unlabeled = seeded_split(plan.lists["train"], int(split), plan.seed, num_classes, classes_of)
    return {"labeled": labeled, "unlabeled": unlabeled, "val": plan.lists["val"]}


def _write_lists(folder: Path, lists: dict[str, list[Pair]]) -> dict[str, str]:
    folder.mkdir(parents=True)
    digests = {}
    for name in LISTS:
        text = "".join(f"{image} {mask}\n" for image, mask in lists[name])
        (folder / f"{name}.txt").write_text(text)
        digests[f"{name}.txt"] = hashlib.sha256(text.encode()).hexdigest()
    return digests


def run_splits(cfg: Config, data_root: Path, out_dir: Path) -> dict:
    """Write every split of cfg.data.splits under out_dir (atomically) and return the manifest.

    Every file any split lists is decoded first, once (the splits share most images); a DataError
    names all bad files and nothing is written.
    """
    data_root, spec, manifest = Path(data_root), cfg.spec, {}
    plans = {split: _plan(cfg, data_root, split, spec) for split in cfg.data.splits}
    classes = check_listed(data_root, _listed(plans), spec.num_classes)
    drawn = {split: _draw(plan, split, spec.num_classes, classes.__getitem__) for split, plan in plans.items()}
    with atomic_directory(Path(out_dir)) as tmp:
        for split, lists in drawn.items():
            digests = _write_lists(tmp / split, lists)
            seed = plans[split].seed
            how = {"source": "published" if seed is None else "seeded", "seed": seed}
            manifest[split] = {**{name: len(lists[name]) for name in LISTS}, **how, "sha256": digests}
        (tmp / "splits.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
