"""pipeline.fetch against a local HTTP server: verify, resume, retry, mirror, and safe extraction.

The Pascal path runs the real stage (`run_download` on the shipped pascal profile, its file list swapped
for one tiny tar in the exact VOC layout).
"""

from __future__ import annotations

import hashlib
import shutil
import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.archive import UnsafeArchiveError, extract
from pipeline.fetch import ChecksumError, DownloadError, download, mirror_url
from pipeline.params import load, replace
from pipeline.stages.download import run_download
from tests.helpers.archives import make_tar, md5, voc_mask, voc_tar
from tests.helpers.http_server import FileServer


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pascal_cfg(files: list[dict]):
    return replace(load(profile="pascal"), {"download.files": files, "download.retries": 0})


# --- the Pascal stage end to end ---------------------------------------------------------------


def test_voc_tar_over_http_lands_in_the_spec_layout(server: FileServer, tmp_path: Path) -> None:
    tar = voc_tar(server.root / "VOCtrainval.tar")
    cfg = pascal_cfg([{"url": server.url("VOCtrainval.tar"), "md5": md5(tar), "dest": "VOCtrainval.tar",
                       "extract": True}])
    root = tmp_path / "data"
    run_download(cfg, root)
    assert (root / "JPEGImages" / "a.jpg").is_file()
    assert (root / "JPEGImages").is_symlink()  # into VOCdevkit/VOC2012, relative
    mask = np.array(Image.open(root / "SegmentationClassAug" / "a.png"))
    assert np.array_equal(mask, voc_mask())  # palette indices, not luminance
    assert (root / "SegmentationClass" / "a.png").is_file()  # the name UniMatch's split lists use
    seen = len(server.requests)
    run_download(cfg, root)  # present and verified: no request
    assert len(server.requests) == seen
    # The archive is kept beside the dataset, not in it (DVC caches the dataset folder): a removed
    # dataset (DVC removes a stage's output before rerunning it) is unpacked again, not downloaded.
    assert not list(root.rglob("*.tar")) and (tmp_path / "archives" / "VOCtrainval.tar").is_file()
    shutil.rmtree(root)
    run_download(cfg, root)
    assert len(server.requests) == seen and (root / "SegmentationClassAug" / "a.png").is_file()


def test_wrong_checksum_names_file_and_both_hashes_and_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    tar = voc_tar(server.root / "VOCtrainval.tar")
    wrong = "0" * 64
    cfg = pascal_cfg([{"url": server.url("VOCtrainval.tar"), "sha256": wrong, "dest": "VOCtrainval.tar",
                       "extract": True}])
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as err:
        run_download(cfg, root)
    assert "VOCtrainval.tar" in str(err.value) and wrong in str(err.value) and sha256(tar) in str(err.value)
    assert list(root.rglob("*")) == []


# --- resume and retry ----------------------------------------------------------------------------


@pytest.fixture
def big(server: FileServer) -> Path:
    path = server.root / "big.bin"
    path.write_bytes(os.urandom(300_000))
    return path


def test_cut_connection_then_next_run_resumes_with_range(server: FileServer, big: Path, tmp_path: Path) -> None:
    server.cut_once("big.bin")
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(DownloadError, match="big.bin"):
        download(server.url("big.bin"), dest, sha256=sha256(big), retries=0)
    part = dest.with_name("big.bin.part")
    received = part.stat().st_size
    assert 0 < received < big.stat().st_size and not dest.exists()
    download(server.url("big.bin"), dest, sha256=sha256(big), retries=0)
    assert server.requests[-1].headers["Range"] == f"bytes={received}-"
    assert dest.read_bytes() == big.read_bytes() and not part.exists()


def test_cut_connection_is_retried_within_one_call(server: FileServer, big: Path, tmp_path: Path) -> None:
    server.cut_once("big.bin")
    dest = download(server.url("big.bin"), tmp_path / "big.bin", sha256=sha256(big), retries=2, backoff_s=0)
    assert [("Range" in r.headers) for r in server.requests] == [False, True]
    assert sha256(dest) == sha256(big)


def test_server_ignoring_range_restarts_from_zero(server: FileServer, big: Path, tmp_path: Path) -> None:
    server.ignore_range = True
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(b"stale bytes")
    download(server.url("big.bin"), dest, sha256=sha256(big), retries=0)
    assert server.requests[-1].headers["Range"] == "bytes=11-"
    assert dest.read_bytes() == big.read_bytes()


def test_part_already_complete_is_verified_not_refetched(server: FileServer, big: Path, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(big.read_bytes())
    download(server.url("big.bin"), dest, sha256=sha256(big), retries=0)  # the server answers 416
    assert dest.read_bytes() == big.read_bytes()


def _cut_unpinned(server: FileServer, tmp_path: Path) -> Path:
    """A .part of big.bin (no checksum configured) left by a cut connection; returns the dest."""
    server.cut_once("big.bin")
    dest = tmp_path / "out" / "big.bin"
    with pytest.raises(DownloadError, match="big.bin"):
        download(server.url("big.bin"), dest, retries=0)
    assert 0 < dest.with_name("big.bin.part").stat().st_size < 300_000
    return dest


@pytest.mark.parametrize("honour_if_range", [True, False])
def test_unpinned_part_of_a_changed_file_is_restarted(server: FileServer, big: Path, tmp_path: Path,
                                                      honour_if_range: bool) -> None:
    dest = _cut_unpinned(server, tmp_path)
    big.write_bytes(os.urandom(300_000))  # the server's file changed since the part was started
    os.utime(big, (1e9, 1e9))
    server.honour_if_range = honour_if_range  # False: the client must notice the changed ETag itself
    download(server.url("big.bin"), dest, retries=0)
    assert dest.read_bytes() == big.read_bytes()
    assert not list(dest.parent.glob("big.bin.part*"))


def test_unpinned_part_of_the_same_file_still_resumes(server: FileServer, big: Path, tmp_path: Path) -> None:
    dest = _cut_unpinned(server, tmp_path)
    received = dest.with_name("big.bin.part").stat().st_size
    download(server.url("big.bin"), dest, retries=0)
    last = server.requests[-1].headers
    assert last["Range"] == f"bytes={received}-" and last["If-Range"].startswith('"')
    assert len(server.requests) == 2 and dest.read_bytes() == big.read_bytes()


def test_unpinned_part_without_validators_restarts_from_zero(server: FileServer, big: Path, tmp_path: Path) -> None:
    server.validators = False  # nothing tells the client the bytes on the server are the same
    dest = _cut_unpinned(server, tmp_path)
    download(server.url("big.bin"), dest, retries=0)
    assert "Range" not in server.requests[-1].headers and dest.read_bytes() == big.read_bytes()


def test_unpinned_part_with_no_record_restarts_from_zero(server: FileServer, big: Path, tmp_path: Path) -> None:
    dest = tmp_path / "big.bin"
    dest.with_name("big.bin.part").write_bytes(b"bytes of who knows what")
    download(server.url("big.bin"), dest, retries=0)
    assert "Range" not in server.requests[-1].headers and dest.read_bytes() == big.read_bytes()


def test_missing_checksum_warns_with_the_sha256_to_pin(server: FileServer, big: Path, tmp_path: Path,
                                                        caplog) -> None:
    with caplog.at_level(logging.WARNING):
        download(server.url("big.bin"), tmp_path / "big.bin", retries=0)
    assert sha256(big) in caplog.text


def test_local_path_folder_and_file_url_sources(tmp_path: Path) -> None:
    src = tmp_path / "src" / "w.bin"
    src.parent.mkdir()
    src.write_bytes(b"weights")
    for i, source in enumerate([str(src), src.as_uri(), str(src.parent)]):
        dest = download(source, tmp_path / f"out{i}" / "w.bin", sha256=sha256(src))
        assert dest.read_bytes() == b"weights"


def test_mirror_replaces_scheme_and_host(server: FileServer, tmp_path: Path) -> None:
    assert mirror_url("https://a.org/models/x.pth?v=1", "http://m:8/base/") == "http://m:8/base/models/x.pth?v=1"
    assert mirror_url("file:///data/x.pth", "http://m") == "file:///data/x.pth"
    served = server.root / "base" / "models" / "w.bin"
    served.parent.mkdir(parents=True)
    served.write_bytes(b"mirrored")
    dest = download("https://unreachable.invalid/models/w.bin", tmp_path / "w.bin", sha256=sha256(served),
                    mirror=f"{server.base}/base", retries=0)
    assert dest.read_bytes() == b"mirrored"
    assert server.requests[-1].path == "/base/models/w.bin"


# --- extraction ----------------------------------------------------------------------------------


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def assert_refused(archive: Path, member: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    target = work / "target"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("kept")
    with pytest.raises(UnsafeArchiveError, match=member.replace(".", r"\.")):
        extract(archive, target)
    assert sorted(p.name for p in work.iterdir()) == ["target"]  # no staging folder, nothing beside
    assert [p.name for p in target.iterdir()] == ["keep.txt"]  # the target untouched
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "sub/../../evil.txt"])
def test_tar_with_dotdot_member_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_tar(tmp_path / "bad.tar", {"ok.txt": b"ok", name: b"evil"})
    assert_refused(archive, name, tmp_path)


def test_tar_with_absolute_member_is_refused(tmp_path: Path) -> None:
    name = str(tmp_path / "evil.txt")
    archive = make_tar(tmp_path / "bad.tar", {"ok.txt": b"ok", name: b"evil"})
    assert_refused(archive, name.lstrip("/"), tmp_path)


@pytest.mark.parametrize("bad", [
    link("out", "../../evil.txt"),
    link("out", "/etc/passwd"),
    link("hard", "../evil.txt", tarfile.LNKTYPE),
])
def test_tar_with_link_leaving_the_target_is_refused(tmp_path: Path, bad: tarfile.TarInfo) -> None:
    archive = make_tar(tmp_path / "bad.tar", {"ok.txt": b"ok"}, (bad,))
    assert_refused(archive, bad.name, tmp_path)


def test_symlink_chain_out_of_the_target_is_refused(tmp_path: Path) -> None:
    # 'b' -> 'x/..' looks inside, but x -> '.' makes it the parent: caught on the real file system
    archive = make_tar(tmp_path / "bad.tar", {}, (link("x", "."), link("b", "x/..")))
    assert_refused(archive, "b", tmp_path)


def test_zip_with_dotdot_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../evil.txt", "evil")
    assert_refused(archive, "../evil.txt", tmp_path)


def test_good_archives_unpack_with_inner_links(tmp_path: Path) -> None:
    tgz = tmp_path / "good.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in {"top/a.txt": b"a"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(link("top/b.txt", "a.txt"))
    zipped = tmp_path / "good.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("z/c.txt", "c")
    target = tmp_path / "target"
    extract(tgz, target)
    extract(zipped, target)
    assert (target / "top" / "b.txt").read_text() == "a" and (target / "z" / "c.txt").read_text() == "c"
