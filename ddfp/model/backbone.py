"""torchvision backbones, dilated to output stride 16 (or 8), returning (low-level, high-level) maps."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torchvision import models

BackboneName = Literal["mobilenet_v2", "resnet50", "resnet101"]


class ResNetBackbone(nn.Module):
    """torchvision ResNet with dilated late stages (the authors dilate layer4 only: OS 16).

    Note: the authors use a deep-stem ResNet-101 whose weights do not load into torchvision's
    7x7 stem; we use torchvision's architecture and ImageNet weights (see README).
    """

    low_channels = 256
    high_channels = 2048

    def __init__(self, depth: Literal[50, 101], output_stride: int) -> None:
        super().__init__()
        dilate = [False, False, True] if output_stride == 16 else [False, True, True]
        ctor = models.resnet50 if depth == 50 else models.resnet101
        net = ctor(weights=None, replace_stride_with_dilation=dilate)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))

    def load_imagenet(self, state: dict[str, Tensor]) -> None:
        # torchvision's file holds the whole classifier; drop fc.* and map onto our submodules.
        mapped = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            head, _, rest = key.partition(".")
            prefix = {"conv1": "stem.0", "bn1": "stem.1"}.get(head, head)
            mapped[f"{prefix}.{rest}"] = value
        self.load_state_dict(mapped, strict=True)


def _dilate(blocks: nn.Module, dilation: int) -> None:
    """Turn strided 3x3 convs into dilated ones (the DeepLab recipe for MobileNet's late blocks).

    The conv that used to downsample gets dilation//2 so its receptive field matches the stride it
    replaces; every later 3x3 conv gets the full dilation.
    """
    for conv in blocks.modules():
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
            continue
        if conv.stride == (2, 2):
            conv.stride = (1, 1)
            d = max(dilation // 2, 1)
        else:
            d = dilation
        conv.dilation, conv.padding = (d, d), (d, d)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features: low level after block 3 (24 ch, stride 4), high level 1280 ch."""

    low_channels = 24
    high_channels = 1280

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        features = models.mobilenet_v2(weights=None).features
        self.low = features[:4]
        self.high = features[4:]
        # Positions in features[4:]: 3 = block 7 and 10 = block 14, the two that still downsample.
        if output_stride == 8:
            _dilate(self.high[3:10], 2)  # blocks 7-13
            _dilate(self.high[10:], 4)  # blocks 14-18
        else:
            _dilate(self.high[10:], 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.low(x)
        return low, self.high(low)

    def load_imagenet(self, state: dict[str, Tensor]) -> None:
        # Slicing an nn.Sequential keeps the original child names, so keys map by index alone.
        merged = {}
        for key, value in state.items():
            if key.startswith("features."):
                idx, _, rest = key[len("features."):].partition(".")
                merged[f"{'low' if int(idx) < 4 else 'high'}.{idx}.{rest}"] = value
        self.load_state_dict(merged, strict=True)


def build_backbone(name: BackboneName, output_stride: int) -> nn.Module:
    if name == "mobilenet_v2":
        return MobileNetV2Backbone(output_stride)
    if name in ("resnet50", "resnet101"):
        return ResNetBackbone(50 if name == "resnet50" else 101, output_stride)
    raise ValueError(f"model.backbone: unknown backbone {name!r}")


def load_backbone_weights(backbone: nn.Module, state: dict[str, Tensor]) -> None:
    """Load a torchvision ImageNet state dict (as published, read by the caller) into the dilated backbone."""
    backbone.load_imagenet(state)  # type: ignore[operator]
