"""Dual BatchNorm of the classifier: a main BN for clean samples, an auxiliary BN for perturbed ones.

AdvProp/MixBN style: perturbed features have other statistics, so they get their own BN and the main
BN (the only one used at evaluation) never sees them. Which samples use which BN is an argument of
forward, not a mode flipped from outside (the authors set `batch_type` attributes on the modules).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DualBatchNorm2d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.BatchNorm2d(channels)
        self.aux = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor, n_main: int, update_stats: bool = True) -> Tensor:
        """Samples [0, n_main) go through the main BN, the rest through the auxiliary BN.

        update_stats=False keeps the running statistics unchanged while still normalising with batch
        statistics in train mode: the perturbation search must not leave traces in the aux BN
        (the authors' attack forward updates it).
        """
        if n_main >= x.shape[0]:
            return self._normalise(self.main, x, update_stats)
        if n_main <= 0:
            return self._normalise(self.aux, x, update_stats)
        return torch.cat(
            [self._normalise(self.main, x[:n_main], update_stats), self._normalise(self.aux, x[n_main:], update_stats)]
        )

    @staticmethod
    def _normalise(bn: nn.BatchNorm2d, x: Tensor, update_stats: bool) -> Tensor:
        if update_stats or not bn.training:
            return bn(x)
        # Batch statistics without touching the running buffers. Under SyncBatchNorm this uses the
        # local batch only: the perturbation search needs a direction, not synchronised statistics.
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
