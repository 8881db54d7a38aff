"""Archive extraction that cannot escape its target.

Archives are checked member by member before anything is written, unpacked into a temporary folder
beside the target and only then moved in, so a refused or broken archive leaves the target as it was.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from pipeline.fetch import DownloadError


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the extraction target."""


def extract(archive: Path, target: Path) -> None:
    """Unpack a tar (any compression) or zip into ``target``; its top-level entries replace same-named ones.

    Refuses, naming the member, absolute paths, paths with '..', links leaving the target and special
    files. Nothing is written until every member has passed, and nothing reaches ``target`` unless all
    of the archive unpacked.
    """
    archive, target = Path(archive), Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        _unpack(archive, staging)
        target.mkdir(exist_ok=True)
        for entry in staging.iterdir():
            _replace(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: Path, into: Path) -> None:
    try:
        if tarfile.is_tarfile(archive):  # tar first: a tar ending in a zip member can look like a zip
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_tar_member(member)
                # the "data" filter re-checks on the real file system (chains of symlinks)
                tar.extractall(into, members=members, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_zip_member(zf, info)
                zf.extractall(into)
        else:
            raise DownloadError(f"{archive.name}: neither a tar nor a zip archive")
    except (UnsafeArchiveError, tarfile.FilterError) as err:
        member = f"member {err.tarinfo.name!r}: " if isinstance(err, tarfile.FilterError) else ""
        raise UnsafeArchiveError(f"{archive.name}: {member}{err}") from None


def _check_tar_member(member: tarfile.TarInfo) -> None:
    _check_name(member.name)
    if member.issym():  # relative to the link's own folder
        _check_link(member.name, member.linkname, posixpath.dirname(member.name))
    elif member.islnk():  # relative to the archive root
        _check_link(member.name, member.linkname, "")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"member {member.name!r}: device or fifo refused")


def _check_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    _check_name(info.filename)
    if stat.S_ISLNK(info.external_attr >> 16):  # a unix symlink: its target is the entry's content
        _check_link(info.filename, zf.read(info).decode("utf-8", "replace"), posixpath.dirname(info.filename))


def _check_name(name: str) -> None:
    path = name.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise UnsafeArchiveError(f"member {name!r}: absolute path refused")
    if ".." in path.split("/"):
        raise UnsafeArchiveError(f"member {name!r}: '..' in the path refused")


def _check_link(name: str, link: str, base: str) -> None:
    norm = posixpath.normpath(posixpath.join(base, link.replace("\\", "/")))
    if link.startswith("/") or norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(f"member {name!r}: link to {link!r} leaves the target")


def _replace(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    os.replace(src, dst)
