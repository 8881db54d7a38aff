"""What differs between datasets, as data: one table instead of copied dataset classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IGNORE_INDEX = 255  # void / boundary / padding in every mask format we read

# ImageNet statistics: every backbone here is ImageNet-pretrained.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    eval_mode: Literal["whole", "sliding"]  # Pascal protocol: padded whole image; Cityscapes: windows
    head_lr_mult: float  # decoder LR multiplier (authors: x10 Pascal, x1 Cityscapes)
    image_dir: str
    mask_dir: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
# The generated demo set: class = texture (colour is random per object, so it carries no signal).
SYNTHETIC_CLASSES = ("background", "stripes", "checkers", "dots", "rings", "brick", "grass", "gravel")

SPECS: dict[str, DatasetSpec] = {
    "pascal": DatasetSpec("pascal", VOC_CLASSES, "whole", 10.0, "JPEGImages", "SegmentationClassAug"),
    "cityscapes": DatasetSpec("cityscapes", CITYSCAPES_CLASSES, "sliding", 1.0, "leftImg8bit", "gtFine"),
    "synthetic": DatasetSpec("synthetic", SYNTHETIC_CLASSES, "whole", 10.0, "JPEGImages", "SegmentationClass"),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"data.dataset: unknown dataset {name!r}; known: {', '.join(SPECS)}") from None
