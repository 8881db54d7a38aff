"""pipeline.stages.download: SBD masks merged into SegmentationClassAug, Cityscapes login and trainIds, synthetic.

Every case runs `run_download` on a shipped profile whose file list points at local files or a local
HTTP server; nothing leaves the machine.
"""

from __future__ import annotations

import io
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import pipeline.stages.download as dl
from pipeline.fetch import DownloadError
from pipeline.params import load, replace
from tests.helpers.archives import make_tar, md5, png_bytes, voc_mask, voc_tar
from tests.helpers.http_server import FileServer


def mat_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1)}})
    return buf.getvalue()


def test_sbd_masks_fill_in_and_voc_masks_win(tmp_path: Path) -> None:
    sbd_b = np.full((8, 8), 7, np.uint8)
    sbd = make_tar(tmp_path / "benchmark.tgz", {
        "benchmark_RELEASE/dataset/cls/a.mat": mat_bytes(np.ones((8, 8), np.uint8)),
        "benchmark_RELEASE/dataset/cls/b.mat": mat_bytes(sbd_b),
    })
    voc = voc_tar(tmp_path / "voc.tar")
    files = [
        {"url": voc.as_uri(), "md5": md5(voc), "dest": "voc.tar", "extract": True},
        {"url": str(sbd), "md5": md5(sbd), "dest": "benchmark.tgz", "extract": True},
    ]
    root = tmp_path / "data"
    dl.run_download(replace(load(profile="pascal"), {"download.files": files}), root)
    out = root / "SegmentationClassAug"
    assert np.array_equal(np.array(Image.open(out / "a.png")), voc_mask())  # VOC's fine mask, not SBD's
    b = Image.open(out / "b.png")
    assert b.mode == "P" and np.array_equal(np.array(b), sbd_b)


def city_zip(path: Path) -> Path:
    label_ids = np.array([[7, 8, 33, 0, 34, 26]], np.uint8)
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "val"):
            stem = f"{split}/jena/jena_000000_000019"
            zf.writestr(f"leftImg8bit/{stem}_leftImg8bit.png", png_bytes(np.zeros((1, 6)), palette=False))
            zf.writestr(f"gtFine/{stem}_gtFine_labelIds.png", png_bytes(label_ids, palette=False))
        zf.writestr("README", "cityscapes")
    return path


def city_cfg(files: list[dict]):
    return replace(load(profile="cityscapes"), {"download.files": files, "download.retries": 0})


def test_cityscapes_login_fetch_and_train_ids(server: FileServer, tmp_path: Path, monkeypatch) -> None:
    # the local server plays cityscapes-dataset.com: login redirects, md5-sum and file-handling answer
    monkeypatch.setattr(dl, "CITYSCAPES", server.base)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "someone")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "pw")
    server.post_status = 302
    (server.root / "login").write_text("form")
    package = city_zip(server.root / "file-handling")
    (server.root / "md5-sum").write_text(f"{md5(package)}  gtFine_trainvaltest.zip\n")
    root = tmp_path / "data"
    files = [{"url": f"{server.base}/file-handling/?packageID=1", "dest": "gt.zip", "extract": True}]
    dl.run_download(city_cfg(files), root)
    train_ids = np.array(Image.open(root / "gtFine/train/jena/jena_000000_000019_gtFine_labelTrainIds.png"))
    assert train_ids.tolist() == [[0, 1, 18, 255, 255, 13]]
    assert (root / "leftImg8bit/val/jena/jena_000000_000019_leftImg8bit.png").is_file()
    assert [r.path for r in server.requests if r.method == "POST"] == ["/login"]


def test_cityscapes_refused_login_never_shows_the_password(
    server: FileServer, tmp_path: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(dl, "CITYSCAPES", server.base)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "someone")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "s3cret-pw")
    (server.root / "login").write_text("form")  # the site re-renders the form: HTTP 200, no redirect
    cfg = city_cfg([{"url": f"{server.base}/file-handling/?packageID=1", "dest": "gt.zip", "extract": True}])
    with pytest.raises(DownloadError, match="login refused") as err:
        dl.run_download(cfg, tmp_path / "data")
    assert b"s3cret-pw" in server.requests[-1].body  # it was sent as the form...
    assert "s3cret-pw" not in str(err.value) + caplog.text  # ...and is shown nowhere


def test_cityscapes_without_credentials_says_what_to_put_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    shipped = [f.model_dump() for f in load(profile="cityscapes").download.files if "cityscapes-dataset" in f.url]
    with pytest.raises(DownloadError) as err:
        dl.run_download(city_cfg(shipped), tmp_path / "data")
    for needle in ("CITYSCAPES_USERNAME", "leftImg8bit/{train,val}", "_gtFine_labelTrainIds.png",
                   f"{tmp_path / 'archives' / 'gtFine_trainvaltest.zip'}"):
        assert needle in str(err.value)


def test_cityscapes_zip_put_in_place_by_hand_needs_no_login(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    root = tmp_path / "data"
    (tmp_path / "archives").mkdir()
    city_zip(tmp_path / "archives" / "gtFine_trainvaltest.zip")  # where the help text says
    cfg = city_cfg([{"url": "https://www.cityscapes-dataset.com/file-handling/?packageID=1",
                     "dest": "gtFine_trainvaltest.zip", "extract": True}])
    dl.run_download(cfg, root)
    assert (root / "gtFine/val/jena/jena_000000_000019_gtFine_labelTrainIds.png").is_file()


def test_synthetic_generates_unless_files_are_configured(tmp_path: Path, monkeypatch) -> None:
    calls = []
    fake = types.ModuleType("pipeline.stages.synthetic")
    fake.write_synthetic = lambda cfg, root: calls.append(root)
    monkeypatch.setitem(sys.modules, "pipeline.stages.synthetic", fake)
    cfg = load(profile="smoke")
    dl.run_download(cfg, tmp_path / "gen")
    assert calls == [tmp_path / "gen"]
    packed = make_tar(tmp_path / "synthetic.tar", {"JPEGImages/x.jpg": b"jpg", "SegmentationClass/x.png": b"png"})
    dl.run_download(replace(cfg, {"download.files": [{"url": str(packed), "dest": "s.tar", "extract": True}]}),
                    tmp_path / "fetched")
    assert (tmp_path / "fetched" / "SegmentationClass" / "x.png").is_file() and len(calls) == 1
