"""Prediction on full images: whole image padded to the crop (Pascal protocol) or sliding windows
(Cityscapes protocol). Models are called in eval mode; only the main BN is used."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddfp.config import EvalProtocol
from ddfp.data.spec import IMAGENET_MEAN, IMAGENET_STD


def black(like: Tensor) -> Tensor:
    """Normalised black, (0 - mean) / std per channel, as a 1 x 3 x 1 x 1 tensor like `like`."""
    mean, std = (torch.tensor(v, dtype=like.dtype, device=like.device) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (-mean / std).view(1, 3, 1, 1)


def predict_whole(model: nn.Module, img: Tensor, crop: int) -> Tensor:
    """B x 3 x H x W -> B x C x H x W logits; the (normalised) image is centre-padded to at least
    crop x crop.

    The border is black, as the authors pad the RGB image with 0 before normalising (and as training
    pads its crops); a normalised 0 would be the mean colour. The padded border is cut away before
    returning.
    """
    h, w = img.shape[-2:]
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    top, left = ph // 2, pw // 2
    padded = img
    if ph or pw:
        padded = black(img).expand(img.shape[0], 3, h + ph, w + pw).clone()
        padded[..., top : top + h, left : left + w] = img
    logits = model(padded).logits
    return logits[..., top : top + h, left : left + w]


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    # Last window is shifted to end at the border (the authors truncate it instead).
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def predict_sliding(model: nn.Module, img: Tensor, crop: int, stride: int, num_classes: int) -> Tensor:
    """Softmax averaged over crop x crop windows with the given stride -> B x C x H x W scores."""
    if min(img.shape[-2:]) < crop:
        return predict_whole(model, img, crop).softmax(dim=1)
    b, _, h, w = img.shape
    scores = img.new_zeros(b, num_classes, h, w)
    counts = img.new_zeros(1, 1, h, w)
    for y in _window_starts(h, crop, stride):
        for x in _window_starts(w, crop, stride):
            window = img[..., y : y + crop, x : x + crop]
            scores[..., y : y + crop, x : x + crop] += model(window).logits.softmax(dim=1)
            counts[..., y : y + crop, x : x + crop] += 1
    return scores / counts


@torch.no_grad()
def class_scores(model: nn.Module, img: Tensor, protocol: EvalProtocol) -> Tensor:
    """B x C x H x W class probabilities under the protocol: what `predict` takes the argmax of, for
    measuring pseudo-labels the way the model is evaluated."""
    if protocol.mode == "sliding":
        return predict_sliding(model, img, protocol.crop_size, protocol.stride, protocol.num_classes)
    return predict_whole(model, img, protocol.crop_size).softmax(dim=1)


@torch.no_grad()
def predict(model: nn.Module, img: Tensor, protocol: EvalProtocol) -> Tensor:
    """Class map B x H x W under the protocol."""
    if protocol.mode == "sliding":
        return class_scores(model, img, protocol).argmax(dim=1)
    return predict_whole(model, img, protocol.crop_size).argmax(dim=1)  # logits: no softmax rounding ties
