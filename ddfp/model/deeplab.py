"""DeepLabV3+ as the authors build it (U2PL decoder), with the classifier's dual BN.

Names follow the paper's split: `encode` produces the 304-channel feature V at stride 4 (the
perturbation is added there), `classify` maps V to the 256-channel feature whose density is modelled
and to class logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddfp.config import ModelConfig
from ddfp.model.backbone import build_backbone, load_backbone_weights
from ddfp.model.dual_bn import DualBatchNorm2d

LOW_CHANNELS = 48


# model.head_channels (the paper's 256) is the width of every ASPP branch, of the ASPP head and of the
# classifier, whose output the flow models.


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Image pooling + 1x1 + three dilated 3x3 branches of `width` channels, concatenated (5 x width)."""

    def __init__(self, c_in: int, dilations: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(c_in, width))
        self.branches = nn.ModuleList(
            [_conv_bn_relu(c_in, width)] + [_conv_bn_relu(c_in, width, 3, d) for d in dilations]
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([pooled] + [b(x) for b in self.branches], dim=1)


class Classifier(nn.Module):
    """Two 3x3 conv blocks with dual BN (304 -> 256 -> 256 at the paper's width), then the 1x1 class projection."""

    def __init__(self, c_in: int, num_classes: int, dropout: float, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, padding=1)
        self.bn1 = DualBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = DualBatchNorm2d(width)
        self.drop = nn.Dropout2d(dropout)
        self.final = nn.Conv2d(width, num_classes, 1)

    def forward(self, h: Tensor, n_main: int, update_stats: bool = True) -> tuple[Tensor, Tensor]:
        """From the first convolution's output h = conv1(V) on (the perturbation reuses h; see
        DeepLabV3Plus.shift)."""
        x = self.drop(F.relu(self.bn1(h, n_main, update_stats)))
        feats = self.drop(F.relu(self.bn2(self.conv2(x), n_main, update_stats)))
        return self.final(feats), feats


@dataclass
class SegOutput:
    logits: Tensor  # B x C x H x W at input resolution
    feats: Tensor  # B x head_channels x h x w at stride 4: the density estimator's input


class DeepLabV3Plus(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        width = cfg.head_channels
        self.backbone = build_backbone(cfg.backbone, cfg.output_stride)
        self.aspp = ASPP(self.backbone.high_channels, cfg.aspp_dilations, width)
        self.aspp_head = nn.Sequential(_conv_bn_relu(5 * width, width, 3), nn.Dropout2d(cfg.dropout))
        self.low_proj = nn.Sequential(
            nn.Conv2d(self.backbone.low_channels, LOW_CHANNELS, 1),
            nn.BatchNorm2d(LOW_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.classifier = Classifier(LOW_CHANNELS + width, num_classes, cfg.dropout, width)

    def encode(self, x: Tensor) -> Tensor:
        """Image -> V, the [low 48 ; ASPP head_channels] feature at stride 4 (304 channels in the paper)."""
        return self.decode(*self.backbone(x))

    def decode(self, low: Tensor, high: Tensor) -> Tensor:
        """The backbone's (low-level, high-level) features -> V. A step of its own because UniMatch's
        feature perturbation drops channels of the backbone's features and decodes them a second time."""
        aspp = self.aspp_head(self.aspp(high))
        aspp = F.interpolate(aspp, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([self.low_proj(low), aspp], dim=1)

    def classify(self, v: Tensor, n_main: int | None = None, update_stats: bool = True) -> tuple[Tensor, Tensor]:
        """V -> (stride-4 logits, head_channels features); samples from n_main on use the aux BN."""
        return self.classify_from(self.first_conv(v), n_main, update_stats)

    # The classifier in two parts, for the perturbation: its first convolution is linear, so the
    # perturbed V + delta needs only conv1(delta) beside the clean pass's conv1(V), and the search's
    # gradient w.r.t. delta is a transposed convolution of the one w.r.t. conv1's output.
    def first_conv(self, v: Tensor) -> Tensor:
        """h = conv1(V), the classifier's first convolution (with its bias)."""
        return self.classifier.conv1(v)

    def classify_from(self, h: Tensor, n_main: int | None = None, update_stats: bool = True) -> tuple[Tensor, Tensor]:
        """classify(V) given h = first_conv(V)."""
        return self.classifier(h, h.shape[0] if n_main is None else n_main, update_stats)

    def shift(self, h: Tensor, delta: Tensor) -> Tensor:
        """first_conv(V + delta) from h = first_conv(V): conv1 of delta without the bias (it counts once)."""
        c = self.classifier.conv1
        return h + F.conv2d(delta, c.weight, None, c.stride, c.padding, c.dilation, c.groups)

    def offset_gradient(self, grad_h: Tensor, v_shape: torch.Size) -> Tensor:
        """The gradient w.r.t. an offset delta of V from the one w.r.t. h (that is, w.r.t. the offset
        of conv1's output): conv1's transposed convolution, which autograd through conv1 would run."""
        c = self.classifier.conv1
        weight = c.weight.to(grad_h.dtype)  # the forward's autocast cast, which this backward mirrors
        return torch.nn.grad.conv2d_input(v_shape, weight, grad_h, c.stride, c.padding, c.dilation, c.groups)

    def forward(self, x: Tensor, n_main: int | None = None) -> SegOutput:
        logits, feats = self.classify(self.encode(x), n_main)
        return SegOutput(upsample(logits, x.shape[-2:]), feats)

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        """Backbone at lr, everything else (the DeepLab head) at lr x head_lr_mult."""
        head = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": list(self.backbone.parameters()), "lr": lr, "base_lr": lr},
            {"params": head, "lr": lr * head_lr_mult, "base_lr": lr * head_lr_mult},
        ]


def upsample(logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear, align_corners=True, as the authors upsample logits before every loss."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def build_model(cfg: ModelConfig, num_classes: int, backbone_state: dict[str, Tensor] | None = None) -> DeepLabV3Plus:
    """backbone_state: torchvision's ImageNet state dict of cfg.backbone, loaded when cfg.pretrained."""
    model = DeepLabV3Plus(cfg, num_classes)
    if cfg.pretrained and backbone_state is not None:
        load_backbone_weights(model.backbone, backbone_state)
    return model
