"""Learning-rate schedules of the segmentation net and the flow (pure functions of the iteration)."""

from __future__ import annotations

from ddfp.config import MethodConfig


def poly_lr(base: float, iteration: int, max_iters: int, power: float) -> float:
    return base * (1 - iteration / max_iters) ** power


def flow_lr(cfg: MethodConfig, epoch: int) -> float:
    """StepLR per epoch decaying flow.lr by flow.lr_decay over the flow's epochs; unlike the authors'
    scheduler, which steps once before the flow ever trains, the first flow epoch runs at the full rate."""
    span = max(cfg.train.epochs - cfg.train.flow_start_epoch, 1)
    return cfg.flow.lr * cfg.flow.lr_decay ** (max(epoch - cfg.train.flow_start_epoch, 0) / span)


__all__ = ["flow_lr", "poly_lr"]
