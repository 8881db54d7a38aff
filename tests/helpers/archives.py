"""Archives and images for the download tests: VOC masks as PNG bytes, tars in memory or of a folder."""

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ddfp.data.masks import voc_palette
from pipeline.files import atomic_write


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def png_bytes(mask: np.ndarray, palette: bool = True) -> bytes:
    image = Image.fromarray(mask.astype(np.uint8))
    if palette:
        image.putpalette(voc_palette())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def voc_mask() -> np.ndarray:
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 15
    mask[1, :] = 255
    return mask


def make_tar(path: Path, files: dict[str, bytes], links: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for link in links:
            tar.addfile(link)
    return path


def voc_tar(path: Path) -> Path:
    jpg = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(jpg, format="JPEG")
    return make_tar(path, {
        "VOCdevkit/VOC2012/JPEGImages/a.jpg": jpg.getvalue(),
        "VOCdevkit/VOC2012/SegmentationClass/a.png": png_bytes(voc_mask()),
        "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": b"a\n",
    })


def pack_tar(root: Path, tar_path: Path, arcname: str) -> None:
    """Pack the folder root as tar_path with members under arcname/ (written to a temp file first)."""
    with atomic_write(tar_path) as fh, tarfile.open(fileobj=fh, mode="w") as tar:
        tar.add(root, arcname=arcname)  # members are added in sorted order: reproducible layout
