"""The smoke configuration's models and a random batch for one training step."""

import torch

from ddfp.data.spec import get_spec
from ddfp.flow.density import DensityEstimator
from ddfp.model.deeplab import build_model
from ddfp.step import Batch, Models
from ddfp.teacher import make_teacher


def make_models(cfg) -> Models:
    torch.manual_seed(0)
    n = get_spec(cfg.data.dataset).num_classes
    student = build_model(cfg.model, n)
    return Models(student, make_teacher(student), DensityEstimator(cfg.flow, cfg.model.head_channels, n))


def make_batch(cfg, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    b, s = cfg.train.batch_size, cfg.data.crop_size
    n = get_spec(cfg.data.dataset).num_classes
    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -4:] = 255
    return Batch(torch.randn(b, 3, s, s, generator=gen), torch.randint(0, n, (b, s, s), generator=gen),
                 torch.randn(b, 3, s, s, generator=gen), torch.randn(b, 3, s, s, generator=gen), ignore,
                 torch.randn(b, 3, s, s, generator=gen))
