"""The DeepLabV3+ head's width: the paper's 256 channels by default, narrower for a 2-core demo."""

import torch

from ddfp.model.deeplab import build_model
from pipeline import params
from pipeline.train.learner import Learner


def test_head_channels_set_the_aspp_classifier_and_flow_widths(smoke_cfg):
    cfg = params.replace(smoke_cfg, {"model.head_channels": 64})
    model = build_model(cfg.model, 5)
    v = model.encode(torch.randn(2, 3, 32, 32))
    assert v.shape[1] == 48 + 64  # [low projection ; ASPP head]
    logits, feats = model.classify(v)
    assert feats.shape[1] == 64 and logits.shape[1] == 5
    trainer = Learner(cfg, torch.device("cpu"), iters_per_epoch=1)
    assert trainer.models.flow.dim == 64  # the flow models the classifier's features


def test_the_pascal_and_cityscapes_heads_are_the_papers():
    for profile in ("pascal", "cityscapes"):
        assert params.load(profile=profile).model.head_channels == 256
    model = build_model(params.load(profile="pascal").model.model_copy(update={"backbone": "mobilenet_v2"}), 5)
    assert model.classifier.conv2.out_channels == 256
    assert model.aspp_head[0][0].out_channels == 256
