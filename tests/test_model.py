"""The DeepLabV3+ head's width: the paper's 256 channels by default, narrower for a 2-core demo."""

import torch

from ddfp import config
from ddfp.model import build_model
from pipeline.learner import Learner


def test_head_channels_set_the_aspp_classifier_and_flow_widths(smoke_cfg):
    cfg = config.replace(smoke_cfg, {"model.head_channels": 64})
    model = build_model(cfg.model, 5)
    v = model.encode(torch.randn(2, 3, 32, 32))
    assert v.shape[1] == 48 + 64  # [low projection ; ASPP head]
    logits, feats = model.classify(v)
    assert feats.shape[1] == 64 and logits.shape[1] == 5
    trainer = Learner(cfg, torch.device("cpu"), iters_per_epoch=1)
    assert trainer.models.flow.dim == 64  # the flow models the classifier's features


def test_the_pascal_and_cityscapes_heads_are_the_papers():
    for profile in ("pascal", "cityscapes"):
        assert config.load(profile=profile).model.head_channels == 256
    model = build_model(config.load(profile="pascal").model.model_copy(update={"backbone": "mobilenet_v2"}), 5)
    assert model.classifier.conv2.out_channels == 256
    assert model.aspp_head[0][0].out_channels == 256
