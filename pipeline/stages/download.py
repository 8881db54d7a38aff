"""The `download` stage: the dataset's files fetched, verified, unpacked and arranged under the dataset root.

Afterwards ``root`` holds the layout of ddfp.data.spec: Pascal ``JPEGImages/`` and
``SegmentationClassAug/``; Cityscapes ``leftImg8bit/`` and ``gtFine/`` with ``*_labelTrainIds.png``;
the published split lists, where configured, in ``published_splits/``. The archives stay beside it
(archive_dir). Rerunning fetches nothing that is present and verified.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
from PIL import Image

from ddfp.data.masks import voc_palette
from ddfp.data.spec import IGNORE_INDEX, get_spec
from pipeline.archive import extract
from pipeline.fetch import DownloadError, download
from pipeline.files import atomic_write, write_bytes_atomic
from pipeline.params import Config
from pipeline.secrets import expand_env, refuse_literal_secret
from pipeline.sections import DownloadConfig, FileSource

log = logging.getLogger(__name__)

VOC = Path("VOCdevkit/VOC2012")  # where VOCtrainval_11-May-2012.tar unpacks
SBD_CLS = Path("benchmark_RELEASE/dataset/cls")  # where SBD's benchmark.tgz unpacks its class masks
CITYSCAPES = "https://www.cityscapes-dataset.com"
# cityscapesScripts' labelId -> trainId (helpers/labels.py); every other labelId is ignored.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_HELP = (
    "Cityscapes needs an account. Either set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD (the stage then "
    "downloads gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip), or put the data in place: "
    "{root}/leftImg8bit/{{train,val}}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
    "{root}/gtFine/{{train,val}}/<city>/..._gtFine_labelTrainIds.png (or ..._gtFine_labelIds.png, "
    "converted here), or the two zip files themselves as {archives}/gtFine_trainvaltest.zip and "
    "{archives}/leftImg8bit_trainvaltest.zip."
)


def run_download(cfg: Config, root: Path) -> None:
    """Fetch and arrange ``cfg.data.dataset`` under ``root``."""
    root = Path(root)
    check_mirror(cfg.download)
    dataset = cfg.data.dataset
    if dataset == "synthetic" and not cfg.download.files:
        from pipeline.stages.synthetic import (
            write_synthetic,  # generated, nothing to fetch
        )

        write_synthetic(cfg, root)
        return
    root.mkdir(parents=True, exist_ok=True)
    if dataset == "cityscapes":
        _cityscapes(cfg.download, root)
        return
    for src in cfg.download.files:
        fetch_file(src, cfg.download, root)
    if dataset == "pascal" and (root / VOC).is_dir():
        _arrange_pascal(root)
    _require_dirs(root, dataset)


def archive_dir(root: Path) -> Path:
    """Where the archives unpacked into ``root`` are kept: beside it, outside the folder DVC tracks,
    so DVC's cache holds the extracted tree only (not the 2-11 GB archives too), and a rerun of the
    stage (DVC removes its output first) unpacks the kept archives instead of downloading them."""
    return root.parent / "archives"


def local_path(src: FileSource, root: Path) -> Path:
    """Where one configured file is kept: an archive in archive_dir, any other file in the dataset."""
    base = (archive_dir(root) if src.extract else root).resolve()
    dest = (base / src.dest).resolve()
    if not dest.is_relative_to(base):
        raise DownloadError(f"download.files: dest {src.dest!r} leaves {base}")
    return dest


def fetch_file(src: FileSource, dl: DownloadConfig, root: Path, session: requests.Session | None = None) -> Path:
    """One configured file, verified, to local_path; an archive is unpacked into ``root`` at the
    place ``src.dest`` names (its folder)."""
    path = download(src.url, local_path(src, root), src.sha256, src.md5, resolved_mirror(dl), dl.timeout_s,
                    dl.retries, session=session)
    if src.extract:
        _extract_once(path, (root / src.dest).parent)
    return path


def check_mirror(dl: DownloadConfig) -> None:
    """Refuse a mirror URL holding a password or token: DVC copies the stage params into dvc.lock."""
    refuse_literal_secret(dl.mirror, "download.mirror", "(DVC copies it into dvc.lock, which is committed; "
                                                        "~/.netrc works too)")


def resolved_mirror(dl: DownloadConfig) -> str:
    """download.mirror for one request, ${VAR} expanded from the environment: use it, never store it."""
    check_mirror(dl)
    return expand_env(dl.mirror, "download.mirror")


def _extract_once(archive: Path, into: Path) -> None:
    # The stamp names the archive's size and mtime: a re-downloaded archive is unpacked again. It
    # lives in the unpacked tree, so a removed tree (DVC removes a stage's output before a rerun)
    # is unpacked again from the kept archive.
    stamp = into / f".{archive.name}.extracted"
    key = f"{archive.stat().st_size} {archive.stat().st_mtime_ns}"
    if stamp.exists() and stamp.read_text() == key:
        return
    log.info("unpacking %s", archive.name)
    into.mkdir(parents=True, exist_ok=True)
    extract(archive, into)
    stamp.write_text(key)


def _require_dirs(root: Path, dataset: str) -> None:
    spec = get_spec(dataset)
    missing = [d for d in (spec.image_dir, spec.mask_dir) if not (root / d).is_dir()]
    if missing:
        raise DownloadError(
            f"{dataset}: {', '.join(str(root / d) for d in missing)} missing after the download; the "
            f"configured download.files must unpack them there (or put them there by hand)"
        )


# --- Pascal VOC 2012 + SBD -------------------------------------------------------------------


def _arrange_pascal(root: Path) -> None:
    """root/JPEGImages -> the VOC folder; root/SegmentationClassAug = SBD masks overlaid by VOC's."""
    _link(root / "JPEGImages", VOC / "JPEGImages")
    out = root / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    _fill_aug_masks(root, out)
    # UniMatch's split lists name the augmented masks SegmentationClass/<id>.png: same files.
    _link(root / "SegmentationClass", Path(out.name))


def _link(link: Path, target: Path) -> None:
    """A relative symlink (the root can move), unless a real folder of that name is already there."""
    if link.is_symlink() or not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)


def _fill_aug_masks(root: Path, out: Path) -> None:
    # VOC's own masks first, for the 1464 train + 1449 val ids: finer, with the 255 boundary band.
    for png in sorted((root / VOC / "SegmentationClass").glob("*.png")):
        target, data = out / png.name, png.read_bytes()
        if not target.exists() or target.read_bytes() != data:
            write_bytes_atomic(target, data)
    sbd = root / SBD_CLS
    if not sbd.is_dir():
        log.warning("SBD (benchmark.tgz) not configured: SegmentationClassAug holds VOC's own masks only")
        return
    palette = voc_palette()
    for mat in sorted(sbd.glob("*.mat")):  # SBD fills in the other train_aug ids
        if not (out / f"{mat.stem}.png").exists():
            _save_mask(_sbd_mask(mat), out / f"{mat.stem}.png", palette)


def _sbd_mask(mat: Path) -> np.ndarray:
    from scipy.io import loadmat  # only this stage needs scipy

    gt = loadmat(mat, squeeze_me=True, struct_as_record=False)["GTcls"]
    return np.asarray(gt.Segmentation, dtype=np.uint8)


def _save_mask(mask: np.ndarray, path: Path, palette: list[int] | None = None) -> None:
    # Palette ('P') or greyscale ('L') PNG: either way the pixel value is the class index.
    image = Image.fromarray(mask)
    if palette is not None:
        image.putpalette(palette)
    with atomic_write(path) as fh:
        image.save(fh, format="PNG")


# --- Cityscapes ------------------------------------------------------------------------------


def _cityscapes(dl: DownloadConfig, root: Path) -> None:
    site = urlsplit(CITYSCAPES).hostname
    behind_login = [f for f in dl.files if urlsplit(f.url).hostname == site]
    if not _cityscapes_present(root):
        missing = [f for f in behind_login if not local_path(f, root).exists()]
        # A mirror serves the packages without the site's login.
        session = _cityscapes_login(root) if missing and not dl.mirror else None
        for src in behind_login:
            md5 = src.md5 or (_site_md5(session, src.url, dl.timeout_s) if session and src in missing else None)
            fetch_file(src.model_copy(update={"md5": md5}), dl, root, session)
        if session is not None:
            session.close()
    if not _cityscapes_present(root):
        raise DownloadError(CITYSCAPES_HELP.format(root=root, archives=archive_dir(root)))
    _make_train_ids(root)
    for src in dl.files:  # the split lists, once the account question is settled
        if src not in behind_login:
            fetch_file(src, dl, root)


def _cityscapes_present(root: Path) -> bool:
    return all((root / top / split).is_dir() for top in ("leftImg8bit", "gtFine") for split in ("train", "val"))


def _cityscapes_login(root: Path) -> requests.Session:
    """Log in as cityscapesScripts' csDownload does; the credentials appear in no message."""
    user, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if not user or not password:
        raise DownloadError(CITYSCAPES_HELP.format(root=root, archives=archive_dir(root)))
    session = requests.Session()
    session.get(f"{CITYSCAPES}/login", allow_redirects=False, timeout=60).raise_for_status()
    form = {"username": user, "password": password, "submit": "Login"}
    resp = session.post(f"{CITYSCAPES}/login", data=form, allow_redirects=False, timeout=60)
    if resp.status_code != 302:  # the site redirects after a good login and re-renders the form otherwise
        session.close()
        raise DownloadError(
            f"Cityscapes login refused (HTTP {resp.status_code}): "
            "check CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD"
        )
    return session


def _site_md5(session: requests.Session, url: str, timeout_s: float) -> str:
    """The md5 the site publishes for a package (what csDownload checks against)."""
    package = parse_qs(urlsplit(url).query)["packageID"][0]
    resp = session.get(f"{CITYSCAPES}/md5-sum/?packageID={package}", allow_redirects=False, timeout=timeout_s)
    resp.raise_for_status()
    return resp.text.split()[0].lower()


def _make_train_ids(root: Path) -> None:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    for split in ("train", "val"):
        for src in sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png")):
            dst = src.with_name(src.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
            if not dst.exists():
                _save_mask(lut[np.asarray(Image.open(src))], dst)
    if not next((root / "gtFine" / "train").glob("*/*_gtFine_labelTrainIds.png"), None):
        raise DownloadError(CITYSCAPES_HELP.format(root=root, archives=archive_dir(root)))
