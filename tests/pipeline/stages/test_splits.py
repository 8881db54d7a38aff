"""Split lists: seeded synthetic splits cover every class; published lists are validated and converted."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddfp.data.masks import classes_present, read_mask
from ddfp.data.spec import SYNTHETIC_CLASSES, get_spec
from pipeline import params
from pipeline.errors import DataError
from pipeline.stages.splits import read_published, run_splits
from pipeline.stages.synthetic import write_synthetic
from pipeline.train.loaders import read_split_file

PASCAL_IDS = [f"2007_{i:06d}" for i in range(12)]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset only, not the shared tiny_data: these tests run the splits stage themselves,
    on a smaller set (40 training and 6 validation images) whose counts they check."""
    cfg = params.replace(params.load(profile="smoke"), {"synthetic.num_train": 40, "synthetic.num_val": 6,
                                                        "synthetic.image_size": 32})
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic(cfg, root)
    return root


def _smoke(overrides: dict) -> params.Config:
    return params.replace(params.load(profile="smoke"), overrides)


def test_synthetic_splits_cover_all_classes_and_are_disjoint(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _smoke({"data.splits": ["8", "16"]})
    manifest = run_splits(cfg, synthetic_root, tmp_path / "splits")
    for split, n in (("8", 8), ("16", 16)):
        folder = tmp_path / "splits" / split
        lists = {name: read_split_file(folder / f"{name}.txt") for name in ("labeled", "unlabeled", "val")}
        assert [len(lists[k]) for k in ("labeled", "unlabeled", "val")] == [n, 40 - n, 6]
        image, mask = lists["labeled"][0]
        assert image.startswith("JPEGImages/") and mask.startswith("SegmentationClass/")
        images = [{img for img, _ in lists[k]} for k in lists]
        assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
        seen = set().union(*(classes_present(read_mask(synthetic_root / m, 8)) for _, m in lists["labeled"]))
        assert seen == set(range(len(SYNTHETIC_CLASSES)))
        digest = hashlib.sha256((folder / "labeled.txt").read_bytes()).hexdigest()
        assert manifest[split]["sha256"]["labeled.txt"] == digest
        assert manifest[split]["seed"] == cfg.data.split_seed and manifest[split]["labeled"] == n
    assert json.loads((tmp_path / "splits" / "splits.json").read_text()) == manifest
    assert run_splits(cfg, synthetic_root, tmp_path / "again") == manifest  # deterministic
    other = run_splits(_smoke({"data.splits": ["8"], "data.split_seed": 1}), synthetic_root, tmp_path / "o")
    assert other["8"]["sha256"] != manifest["8"]["sha256"]


def test_impossible_class_coverage_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot cover all 8 classes"):
        run_splits(_smoke({"data.splits": ["1"]}), synthetic_root, tmp_path / "splits")
    assert not (tmp_path / "splits").exists()  # nothing half-written


@pytest.fixture()
def pascal_root(tmp_path: Path) -> Path:
    """A tiny Pascal-like root: every mask shows all 21 classes, so any seeded draw covers them."""
    root = tmp_path / "pascal"
    spec = get_spec("pascal")
    (root / spec.image_dir).mkdir(parents=True)
    (root / spec.mask_dir).mkdir()
    mask = np.arange(24, dtype=np.uint8).reshape(4, 6) % 21
    for image_id in PASCAL_IDS:
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / spec.image_dir / f"{image_id}.jpg")
        Image.fromarray(mask).save(root / spec.mask_dir / f"{image_id}.png")
    _publish(root, "tiny", PASCAL_IDS[:2], PASCAL_IDS[2:9], PASCAL_IDS[9:])
    return root


def _publish(root: Path, split: str, labeled: list[str], unlabeled: list[str], val: list[str]) -> None:
    folder = root / "published_splits" / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labeled.txt").write_text("\n".join(labeled))  # DDFP's files lack the final newline
    (folder / "unlabeled.txt").write_text("\n".join(unlabeled))
    (root / "published_splits" / "val.txt").write_text("\n".join(val))


def test_published_ddfp_format_is_converted(pascal_root: Path, tmp_path: Path) -> None:
    manifest = run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["tiny", "4"]}), pascal_root, tmp_path / "s")
    assert (tmp_path / "s" / "tiny" / "labeled.txt").read_text().splitlines() == [
        f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png" for i in PASCAL_IDS[:2]
    ]
    assert manifest["tiny"]["source"] == "published" and manifest["tiny"]["val"] == 3
    assert manifest["4"]["source"] == "seeded"  # numeric, not published: drawn from the train pool
    assert (manifest["4"]["labeled"], manifest["4"]["unlabeled"]) == (4, 5)


def test_published_unimatch_format_is_accepted(pascal_root: Path, tmp_path: Path) -> None:
    folder = pascal_root / "published_splits" / "tiny"
    lines = [f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in PASCAL_IDS[:2]]
    (folder / "labeled.txt").write_text("".join(lines))
    manifest = run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["tiny"]}), pascal_root, tmp_path / "s")
    assert manifest["tiny"]["labeled"] == 2


def test_missing_id_is_named(pascal_root: Path, tmp_path: Path) -> None:
    _publish(pascal_root, "tiny", PASCAL_IDS[:2] + ["2099_999999"], PASCAL_IDS[2:9], PASCAL_IDS[9:])
    with pytest.raises(DataError, match="labeled.txt: 2099_999999: .* does not exist"):
        run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["tiny"]}), pascal_root, tmp_path / "s")


def test_overlap_is_named(pascal_root: Path, tmp_path: Path) -> None:
    _publish(pascal_root, "tiny", PASCAL_IDS[:3], PASCAL_IDS[2:9], PASCAL_IDS[9:])
    with pytest.raises(DataError, match="share 1 images, e.g. 2007_000002"):
        run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["tiny"]}), pascal_root, tmp_path / "s")


def test_published_counts_are_checked(pascal_root: Path, tmp_path: Path) -> None:
    _publish(pascal_root, "92", PASCAL_IDS[:2], PASCAL_IDS[2:9], PASCAL_IDS[9:])
    with pytest.raises(DataError, match="split 92 has 2 labelled / 7 unlabelled images, published 92 / 10490"):
        run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["92"]}), pascal_root, tmp_path / "s")


def test_cityscapes_line_maps_to_train_ids(tmp_path: Path) -> None:
    path = tmp_path / "labeled.txt"
    path.write_text("leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png\n")
    assert read_published(path, get_spec("cityscapes")) == [(
        "leftImg8bit/train/jena/jena_000078_000019_leftImg8bit.png",
        "gtFine/train/jena/jena_000078_000019_gtFine_labelTrainIds.png",
    )]
    path.write_text("2007_000032\n")
    with pytest.raises(DataError, match="labeled.txt:1"):
        read_published(path, get_spec("cityscapes"))


def test_duplicate_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "unlabeled.txt"
    path.write_text("2007_000032\n2007_000033\n2007_000032\n")
    with pytest.raises(DataError, match="2007_000032.jpg is listed twice"):
        read_published(path, get_spec("pascal"))


def test_published_name_without_its_lists_is_refused(pascal_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="split 1464 is a published pascal split"):
        run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["1464"]}), pascal_root, tmp_path / "s")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _break_files(root: Path) -> list[Path]:
    """A truncated JPEG, a garbage JPEG, a truncated mask and a mask with a non-class value."""
    spec = get_spec("pascal")
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    truncated = root / spec.image_dir / f"{PASCAL_IDS[0]}.jpg"
    Image.fromarray(noise).save(truncated)
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / spec.mask_dir / f"{PASCAL_IDS[0]}.png")
    _truncate(truncated)
    garbage = root / spec.image_dir / f"{PASCAL_IDS[3]}.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG" * 10)
    cut_mask = root / spec.mask_dir / f"{PASCAL_IDS[5]}.png"
    Image.fromarray(noise[..., 0] % 21).save(cut_mask)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / spec.image_dir / f"{PASCAL_IDS[5]}.jpg")
    _truncate(cut_mask)
    bad_values = root / spec.mask_dir / f"{PASCAL_IDS[10]}.png"
    Image.fromarray(np.full((4, 6), 99, np.uint8)).save(bad_values)
    return [truncated, garbage, cut_mask, bad_values]


def test_every_undecodable_file_is_named_in_one_error(pascal_root: Path, tmp_path: Path) -> None:
    bad = _break_files(pascal_root)
    with pytest.raises(DataError) as err:
        run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["tiny", "4"]}), pascal_root, tmp_path / "s")
    message = str(err.value)
    assert all(str(path) in message for path in bad), message
    assert "mask values [99]" in message and message.count(str(bad[0])) == 1  # named once, not per split
    assert not (tmp_path / "s").exists()


def test_ddfp_splits_names_every_bad_file_and_exits_3(pascal_root: Path, tmp_path: Path) -> None:
    bad = _break_files(pascal_root)
    ddfp = Path(sys.executable).parent / "ddfp"
    out = tmp_path / "s"
    run = subprocess.run([str(ddfp), "splits", "--profile", "smoke", "--set", "data.dataset=pascal",
                          "--set", "data.splits=[tiny]", "--data", str(pascal_root), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert run.stderr.startswith("ddfp splits: error: ") and "Traceback" not in run.stderr
    assert all(str(path) in run.stderr for path in bad), run.stderr
    assert not out.exists() and not list(tmp_path.glob(".s.*"))


@pytest.mark.parametrize("entry", ["/etc/hostname", "../outside.jpg", "JPEGImages/../../outside.jpg"])
def test_paths_leaving_the_data_root_are_refused(pascal_root: Path, tmp_path: Path, entry: str) -> None:
    (tmp_path / "outside.jpg").write_bytes((pascal_root / "JPEGImages" / f"{PASCAL_IDS[0]}.jpg").read_bytes())
    folder = pascal_root / "published_splits" / "tiny"
    lines = [f"JPEGImages/{PASCAL_IDS[0]}.jpg SegmentationClassAug/{PASCAL_IDS[0]}.png",
             f"{entry} SegmentationClassAug/{PASCAL_IDS[1]}.png"]
    (folder / "labeled.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"{re.escape(entry)}: leaves the data root"):
        run_splits(_smoke({"data.dataset": "pascal", "data.splits": ["tiny"]}), pascal_root, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def _pinned(dest: str, sha256: str) -> dict:
    return {"data.dataset": "pascal", "data.splits": ["tiny"],
            "download.files": [{"url": f"https://example.org/{dest}", "dest": dest, "sha256": sha256}]}


def test_a_split_list_with_another_hash_is_refused_by_name(pascal_root: Path, tmp_path: Path) -> None:
    listed = pascal_root / "published_splits" / "tiny" / "labeled.txt"
    good = hashlib.sha256(listed.read_bytes()).hexdigest()
    run_splits(_smoke(_pinned("published_splits/tiny/labeled.txt", good)), pascal_root, tmp_path / "ok")
    _publish(pascal_root, "tiny", PASCAL_IDS[1:3], PASCAL_IDS[3:9], PASCAL_IDS[9:])  # same counts, other ids
    found = hashlib.sha256(listed.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=f"{listed}: sha256 {found}, but download.files pins {good}"):
        run_splits(_smoke(_pinned("published_splits/tiny/labeled.txt", good)), pascal_root, tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("profile", ["pascal", "cityscapes"])
def test_every_published_split_list_is_pinned_by_sha256(profile: str) -> None:
    files = [f for f in params.load(profile=profile).download.files if f.dest.startswith("published_splits/")]
    splits = params.load(profile=profile).data.splits
    assert {f.dest for f in files} == {f"published_splits/{s}/{k}.txt" for s in splits
                                       for k in ("labeled", "unlabeled")} | {"published_splits/val.txt"}
    assert all(f.sha256 for f in files)


def test_the_cityscapes_eighth_split_is_the_fixed_list() -> None:
    # DDFP's own 1/8 list (= U2PL's after its split fix), not U2PL's list from before the fix.
    pinned = {f.dest: f for f in params.load(profile="cityscapes").download.files}["published_splits/372/labeled.txt"]
    assert pinned.url.startswith("https://raw.githubusercontent.com/Gavinwxy/DDFP/7956c72")
    assert pinned.sha256 == "a7fa9c926a15c3983a6b2b884dc455bcfaf59ddc2cbe63f895e1d067d5a7f9b4"
